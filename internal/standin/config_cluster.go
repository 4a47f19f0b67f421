package standin

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// clusterConfig is one static cluster, resolved.
type clusterConfig struct {
	name           string
	endpoints      []endpointConfig
	connectTimeout time.Duration
	limits         thresholds
	// idleTimeout closes a connection without streams (common_http_protocol_options,
	// 1 h by default); maxRequestsPerConnection drains a connection after that many
	// streams (0: unlimited).
	idleTimeout              time.Duration
	maxRequestsPerConnection uint32
	keepalive                *keepaliveConfig // HTTP/2 connection_keepalive
	// filters is the cluster's own upstream filter chain; hasFilters says whether
	// HttpProtocolOptions.http_filters was set (then it wins over the router's).
	filters    []*filterConfig
	hasFilters bool
	retry      *retryPolicy
	tls        *tlsConfig // nil: plaintext
	autoSNI    bool       // upstream_http_protocol_options.auto_sni
	http2      bool
	autoHTTP   bool // auto_config: ALPN chooses HTTP/2 or HTTP/1.1 over TLS
	health     *healthCheckConfig
	panicPct   float64
}

type endpointConfig struct {
	network  string // "tcp", or "unix" for an Envoy pipe address
	address  string // host:port, or the socket path, to dial
	hostname string // the configured host, for auto_host_rewrite
}

// keepaliveConfig is Http2ProtocolOptions.connection_keepalive.
type keepaliveConfig struct {
	interval time.Duration
	timeout  time.Duration
}

// defaultIdleTimeout is HttpProtocolOptions.idle_timeout for upstream connections.
const defaultIdleTimeout = time.Hour

type retryBudget struct {
	percent        float64
	minConcurrency uint32
}

type tlsConfig struct {
	sni      string
	autoSNI  bool
	alpn     []string
	verify   bool
	roots    *x509.CertPool // nil with verify: system roots
	caSource string
	sans     []sanMatcher      // match_typed_subject_alt_names: one must match
	certs    []tls.Certificate // tls_certificates: the client certificate (mTLS)
}

type sanMatcher struct {
	sanType tlsv3.SubjectAltNameMatcher_SanType
	m       *stringMatcher
}

func buildCluster(c *clusterv3.Cluster) (*clusterConfig, error) {
	where := fmt.Sprintf("cluster %q", c.GetName())
	if err := onlyFields(where, c, "name", "type", "connect_timeout", "lb_policy", "load_assignment", "health_checks",
		"circuit_breakers", "typed_extension_protocol_options", "transport_socket", "dns_lookup_family",
		"dns_refresh_rate", "respect_dns_ttl", "common_lb_config", "per_connection_buffer_limit_bytes",
		"alt_stat_name", "wait_for_warm_on_init"); err != nil {
		return nil, err
	}
	cc := &clusterConfig{
		name:           c.GetName(),
		connectTimeout: durationOr(c.GetConnectTimeout(), defaultConnectTimeout),
		limits:         defaultThresholds,
		panicPct:       defaultPanicThreshold,
		idleTimeout:    defaultIdleTimeout,
	}
	switch c.GetType() {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
	default:
		return nil, fmt.Errorf("%s: type %s: %w (STATIC, STRICT_DNS or LOGICAL_DNS)", where, c.GetType(), ErrUnsupported)
	}
	if c.GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN {
		return nil, fmt.Errorf("%s: lb_policy %s: %w (ROUND_ROBIN only)", where, c.GetLbPolicy(), ErrUnsupported)
	}
	if err := cc.readEndpoints(where, c); err != nil {
		return nil, err
	}
	if c.GetType() == clusterv3.Cluster_LOGICAL_DNS && len(cc.endpoints) != 1 {
		return nil, fmt.Errorf("%s: LOGICAL_DNS needs exactly one endpoint", where)
	}
	if lb := c.GetCommonLbConfig(); lb != nil {
		if err := onlyFields(where+" common_lb_config", lb, "healthy_panic_threshold"); err != nil {
			return nil, err
		}
		if lb.GetHealthyPanicThreshold() != nil {
			cc.panicPct = lb.GetHealthyPanicThreshold().GetValue()
		}
	}
	if err := cc.readCircuitBreakers(where, c.GetCircuitBreakers()); err != nil {
		return nil, err
	}
	var errs []error
	for key, a := range c.GetTypedExtensionProtocolOptions() {
		if key != keyHTTPProtoOpt {
			errs = append(errs, fmt.Errorf("%s: typed_extension_protocol_options[%q]: %w", where, key, ErrUnsupported))
			continue
		}
		opts := &httpv3.HttpProtocolOptions{}
		if err := unpack(where, a, typeHTTPProtoOpt, opts); err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, cc.readHTTPOptions(where, opts))
	}
	if ts := c.GetTransportSocket(); ts != nil {
		t, err := buildUpstreamTLS(where, ts)
		if err != nil {
			errs = append(errs, err)
		}
		cc.tls = t
	}
	if len(c.GetHealthChecks()) > 1 {
		errs = append(errs, fmt.Errorf("%s: health_checks: %w: more than one health checker", where, ErrUnsupported))
	} else if len(c.GetHealthChecks()) == 1 {
		hc, err := buildHealthCheck(where+" health_checks[0]", c.GetHealthChecks()[0])
		errs = append(errs, err)
		cc.health = hc
	}
	return cc, errors.Join(errs...)
}

func (cc *clusterConfig) readEndpoints(where string, c *clusterv3.Cluster) error {
	la := c.GetLoadAssignment()
	if err := onlyFields(where+" load_assignment", la, "cluster_name", "endpoints"); err != nil {
		return err
	}
	for _, lle := range la.GetEndpoints() {
		if err := onlyFields(where+" locality_lb_endpoints", lle, "lb_endpoints", "locality"); err != nil {
			return err
		}
		for _, lbe := range lle.GetLbEndpoints() {
			if err := onlyFields(where+" lb_endpoints", lbe, "endpoint"); err != nil {
				return err
			}
			addr := lbe.GetEndpoint().GetAddress()
			if pipe := addr.GetPipe(); pipe != nil {
				// An Envoy pipe address is a Unix domain socket path; "@name" is Linux's
				// abstract namespace (Address::PipeInstance), which net.Dial reads alike.
				if err := onlyFields(where+" endpoint pipe", pipe, "path", "mode"); err != nil {
					return err
				}
				if c.GetType() != clusterv3.Cluster_STATIC {
					return fmt.Errorf("%s: a pipe endpoint needs a STATIC cluster", where)
				}
				cc.endpoints = append(cc.endpoints, endpointConfig{network: "unix", address: pipe.GetPath(), hostname: pipe.GetPath()})
				continue
			}
			sa := addr.GetSocketAddress()
			if sa == nil {
				return fmt.Errorf("%s: endpoint: %w: only socket_address or pipe", where, ErrUnsupported)
			}
			port := strconv.Itoa(int(sa.GetPortValue()))
			cc.endpoints = append(cc.endpoints, endpointConfig{network: "tcp", address: net.JoinHostPort(sa.GetAddress(), port), hostname: sa.GetAddress()})
		}
	}
	if len(cc.endpoints) == 0 {
		return fmt.Errorf("%s: load_assignment has no endpoints", where)
	}
	return nil
}

func (cc *clusterConfig) readCircuitBreakers(where string, cb *clusterv3.CircuitBreakers) error {
	if cb == nil {
		return nil
	}
	if err := onlyFields(where+" circuit_breakers", cb, "thresholds"); err != nil {
		return err
	}
	for _, t := range cb.GetThresholds() {
		// Only the default priority carries traffic in the stand-in; HIGH thresholds are
		// accepted and unused, as they are in Envoy for default-priority routes.
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		if err := onlyFields(where+" circuit_breakers.thresholds", t, "priority", "max_connections", "max_pending_requests",
			"max_requests", "max_retries", "retry_budget", "track_remaining"); err != nil {
			return err
		}
		for _, lim := range []struct {
			v   interface{ GetValue() uint32 }
			set bool
			dst *uint64
		}{
			{t.GetMaxConnections(), t.GetMaxConnections() != nil, &cc.limits.maxConnections},
			{t.GetMaxPendingRequests(), t.GetMaxPendingRequests() != nil, &cc.limits.maxPending},
			{t.GetMaxRequests(), t.GetMaxRequests() != nil, &cc.limits.maxRequests},
			{t.GetMaxRetries(), t.GetMaxRetries() != nil, &cc.limits.maxRetries},
		} {
			if lim.set {
				*lim.dst = uint64(lim.v.GetValue())
			}
		}
		if rb := t.GetRetryBudget(); rb != nil {
			b := &retryBudget{percent: 20, minConcurrency: 3}
			if rb.GetBudgetPercent() != nil {
				b.percent = rb.GetBudgetPercent().GetValue()
			}
			if rb.GetMinRetryConcurrency() != nil {
				b.minConcurrency = rb.GetMinRetryConcurrency().GetValue()
			}
			cc.limits.budget = b
		}
	}
	return nil
}

func (cc *clusterConfig) readHTTPOptions(where string, o *httpv3.HttpProtocolOptions) error {
	where += " " + keyHTTPProtoOpt
	if err := onlyFields(where, o, "common_http_protocol_options", "upstream_http_protocol_options", "explicit_http_config",
		"auto_config", "http_filters", "retry_policy"); err != nil {
		return err
	}
	if cp := o.GetCommonHttpProtocolOptions(); cp != nil {
		if err := onlyFields(where+" common_http_protocol_options", cp, "idle_timeout", "max_requests_per_connection", "max_headers_count", "headers_with_underscores_action"); err != nil {
			return err
		}
		if cp.GetIdleTimeout() != nil {
			cc.idleTimeout = cp.GetIdleTimeout().AsDuration() // 0 disables it
		}
		cc.maxRequestsPerConnection = cp.GetMaxRequestsPerConnection().GetValue()
	}
	var h2 *corev3.Http2ProtocolOptions
	switch p := o.GetUpstreamProtocolOptions().(type) {
	case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_:
		cc.http2 = p.ExplicitHttpConfig.GetHttp2ProtocolOptions() != nil
		h2 = p.ExplicitHttpConfig.GetHttp2ProtocolOptions()
		if p.ExplicitHttpConfig.GetHttp3ProtocolOptions() != nil {
			return fmt.Errorf("%s: http3_protocol_options: %w", where, ErrUnsupported)
		}
	case *httpv3.HttpProtocolOptions_AutoConfig:
		cc.autoHTTP = true
		h2 = p.AutoConfig.GetHttp2ProtocolOptions()
		if p.AutoConfig.GetHttp3ProtocolOptions() != nil {
			return fmt.Errorf("%s: auto_config.http3_protocol_options: %w", where, ErrUnsupported)
		}
	case *httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig:
		return fmt.Errorf("%s: use_downstream_protocol_config: %w", where, ErrUnsupported)
	}
	if h2 != nil {
		if err := onlyFields(where+" http2_protocol_options", h2, "connection_keepalive", "max_concurrent_streams",
			"initial_stream_window_size", "initial_connection_window_size"); err != nil {
			return err
		}
		if ka := h2.GetConnectionKeepalive(); ka != nil {
			if err := onlyFields(where+" http2_protocol_options.connection_keepalive", ka, "interval", "timeout", "interval_jitter"); err != nil {
				return err
			}
			// interval_jitter only spreads the pings; connection_idle_interval is refused.
			cc.keepalive = &keepaliveConfig{interval: durationOr(ka.GetInterval(), 0), timeout: durationOr(ka.GetTimeout(), 0)}
		}
	}
	if u := o.GetUpstreamHttpProtocolOptions(); u != nil {
		if err := onlyFields(where+" upstream_http_protocol_options", u, "auto_sni", "auto_san_validation"); err != nil {
			return err
		}
		cc.autoSNI = u.GetAutoSni()
	}
	if hasField(o, "http_filters") {
		fs, err := buildUpstreamFilters(where+" http_filters", o.GetHttpFilters())
		if err != nil {
			return err
		}
		cc.filters, cc.hasFilters = fs, true
	}
	if o.GetRetryPolicy() != nil {
		rp, err := buildRetryPolicy(where+" retry_policy", o.GetRetryPolicy())
		if err != nil {
			return err
		}
		cc.retry = rp
	}
	return nil
}

func buildUpstreamTLS(where string, ts *corev3.TransportSocket) (*tlsConfig, error) {
	ctx := &tlsv3.UpstreamTlsContext{}
	if err := unpack(where+" transport_socket", ts.GetTypedConfig(), typeUpstreamTLS, ctx); err != nil {
		return nil, err
	}
	if err := onlyFields(where+" UpstreamTlsContext", ctx, "common_tls_context", "sni", "auto_host_sni"); err != nil {
		return nil, err
	}
	t := &tlsConfig{sni: ctx.GetSni(), autoSNI: ctx.GetAutoHostSni()}
	common := ctx.GetCommonTlsContext()
	if err := onlyFields(where+" common_tls_context", common, "alpn_protocols", "validation_context", "tls_params", "tls_certificates"); err != nil {
		return nil, err
	}
	t.alpn = common.GetAlpnProtocols()
	for i, tc := range common.GetTlsCertificates() {
		w := fmt.Sprintf("%s common_tls_context.tls_certificates[%d]", where, i)
		if err := onlyFields(w, tc, "certificate_chain", "private_key"); err != nil {
			return nil, err
		}
		chain, err := readDataSource(w+".certificate_chain", tc.GetCertificateChain())
		if err != nil {
			return nil, err
		}
		key, err := readDataSource(w+".private_key", tc.GetPrivateKey())
		if err != nil {
			return nil, err
		}
		cert, err := tls.X509KeyPair(chain, key)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w, err)
		}
		t.certs = append(t.certs, cert)
	}
	if vc := common.GetValidationContext(); vc != nil {
		if err := onlyFields(where+" validation_context", vc, "trusted_ca", "system_root_certs", "match_typed_subject_alt_names"); err != nil {
			return nil, err
		}
		t.verify = true
		for i, san := range vc.GetMatchTypedSubjectAltNames() {
			if err := onlyFields(where+" match_typed_subject_alt_names", san, "san_type", "matcher"); err != nil {
				return nil, err
			}
			switch san.GetSanType() {
			case tlsv3.SubjectAltNameMatcher_DNS, tlsv3.SubjectAltNameMatcher_URI, tlsv3.SubjectAltNameMatcher_IP_ADDRESS, tlsv3.SubjectAltNameMatcher_EMAIL:
			default:
				return nil, fmt.Errorf("%s: match_typed_subject_alt_names[%d] san_type %s: %w", where, i, san.GetSanType(), ErrUnsupported)
			}
			m, err := buildStringMatcher(fmt.Sprintf("%s match_typed_subject_alt_names[%d]", where, i), san.GetMatcher())
			if err != nil {
				return nil, err
			}
			t.sans = append(t.sans, sanMatcher{sanType: san.GetSanType(), m: m})
		}
		if ca := vc.GetTrustedCa(); ca != nil {
			t.caSource = ca.GetFilename()
			pem, err := readDataSource(where+" trusted_ca", ca)
			if err != nil {
				return nil, err
			}
			t.roots = x509.NewCertPool()
			if !t.roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s: trusted_ca holds no PEM certificate", where)
			}
		}
	}
	return t, nil
}

// readDataSource reads a config.core.v3.DataSource: a file (read once, at load, as
// Envoy does for static transport sockets) or inline bytes or string.
func readDataSource(where string, ds *corev3.DataSource) ([]byte, error) {
	switch {
	case ds.GetFilename() != "":
		b, err := os.ReadFile(ds.GetFilename())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		return b, nil
	case ds.GetInlineString() != "":
		return []byte(ds.GetInlineString()), nil
	case len(ds.GetInlineBytes()) > 0:
		return ds.GetInlineBytes(), nil
	}
	return nil, fmt.Errorf("%s: %w: only filename, inline_string or inline_bytes", where, ErrUnsupported)
}

// clientConfig builds the crypto/tls configuration for one connection. Without a
// validation_context Envoy does not verify the upstream certificate, and neither does
// the stand-in. With one it verifies the chain against the trusted CA but, like Envoy
// without match_typed_subject_alt_names, not the host name. rootsOverride
// (Options.RootCAs) replaces the configured trust anchors so tests can use their own CA.
func (t *tlsConfig) clientConfig(serverName string, rootsOverride *x509.CertPool, nextProtos []string) *tls.Config {
	cfg := &tls.Config{
		ServerName:         serverName,
		NextProtos:         nextProtos,
		Certificates:       t.certs,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, //nolint:gosec // chain checked below when Envoy would check it.
	}
	if !t.verify {
		return cfg
	}
	roots := t.roots
	if rootsOverride != nil {
		roots = rootsOverride
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("upstream sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
		if err != nil {
			return fmt.Errorf("verify upstream certificate: %w", err)
		}
		if len(t.sans) > 0 && !t.sansMatch(cs.PeerCertificates[0]) {
			return errors.New("verify upstream certificate: no subject alt name matches match_typed_subject_alt_names")
		}
		return nil
	}
	return cfg
}

// sansMatch is DefaultCertValidator's SAN check: any SAN of the configured type
// matching any matcher passes. A DNS exact matcher also accepts a wildcard SAN
// ("*.openai.com" for "api.openai.com"), as Envoy's dnsNameMatch does.
func (t *tlsConfig) sansMatch(cert *x509.Certificate) bool {
	for _, s := range t.sans {
		var values []string
		switch s.sanType {
		case tlsv3.SubjectAltNameMatcher_DNS:
			values = cert.DNSNames
		case tlsv3.SubjectAltNameMatcher_EMAIL:
			values = cert.EmailAddresses
		case tlsv3.SubjectAltNameMatcher_URI:
			for _, u := range cert.URIs {
				values = append(values, u.String())
			}
		case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
			for _, ip := range cert.IPAddresses {
				values = append(values, ip.String())
			}
		}
		for _, v := range values {
			if s.m.match(v) {
				return true
			}
			if s.sanType == tlsv3.SubjectAltNameMatcher_DNS && s.m.exact != nil && strings.HasPrefix(v, "*.") {
				want := *s.m.exact
				if i := strings.IndexByte(want, '.'); i > 0 && strings.EqualFold(want[i:], v[1:]) {
					return true
				}
			}
		}
	}
	return false
}
