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
	maxRetries     uint32
	budget         *retryBudget
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
	address  string // host:port to dial
	hostname string // the configured host, for auto_host_rewrite
}

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
	sans     []sanMatcher // match_typed_subject_alt_names: one must match
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
		maxRetries:     defaultMaxRetries,
		panicPct:       defaultPanicThreshold,
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
			sa := lbe.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				return fmt.Errorf("%s: endpoint: %w: only socket_address", where, ErrUnsupported)
			}
			port := strconv.Itoa(int(sa.GetPortValue()))
			cc.endpoints = append(cc.endpoints, endpointConfig{address: net.JoinHostPort(sa.GetAddress(), port), hostname: sa.GetAddress()})
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
		// max_connections, max_pending_requests and max_requests are accepted but not
		// enforced: they shape load, not the behaviour a single request sees.
		if err := onlyFields(where+" circuit_breakers.thresholds", t, "priority", "max_connections", "max_pending_requests",
			"max_requests", "max_retries", "retry_budget", "track_remaining"); err != nil {
			return err
		}
		if t.GetMaxRetries() != nil {
			cc.maxRetries = t.GetMaxRetries().GetValue()
		}
		if rb := t.GetRetryBudget(); rb != nil {
			b := &retryBudget{percent: 20, minConcurrency: 3}
			if rb.GetBudgetPercent() != nil {
				b.percent = rb.GetBudgetPercent().GetValue()
			}
			if rb.GetMinRetryConcurrency() != nil {
				b.minConcurrency = rb.GetMinRetryConcurrency().GetValue()
			}
			cc.budget = b
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
	switch p := o.GetUpstreamProtocolOptions().(type) {
	case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_:
		cc.http2 = p.ExplicitHttpConfig.GetHttp2ProtocolOptions() != nil
		if p.ExplicitHttpConfig.GetHttp3ProtocolOptions() != nil {
			return fmt.Errorf("%s: http3_protocol_options: %w", where, ErrUnsupported)
		}
	case *httpv3.HttpProtocolOptions_AutoConfig:
		cc.autoHTTP = true
		if p.AutoConfig.GetHttp3ProtocolOptions() != nil {
			return fmt.Errorf("%s: auto_config.http3_protocol_options: %w", where, ErrUnsupported)
		}
	case *httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig:
		return fmt.Errorf("%s: use_downstream_protocol_config: %w", where, ErrUnsupported)
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
	if err := onlyFields(where+" common_tls_context", common, "alpn_protocols", "validation_context", "tls_params"); err != nil {
		return nil, err
	}
	t.alpn = common.GetAlpnProtocols()
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
			var pem []byte
			switch {
			case ca.GetFilename() != "":
				t.caSource = ca.GetFilename()
				b, err := os.ReadFile(ca.GetFilename())
				if err != nil {
					return nil, fmt.Errorf("%s: trusted_ca: %w", where, err)
				}
				pem = b
			case ca.GetInlineString() != "":
				pem = []byte(ca.GetInlineString())
			case len(ca.GetInlineBytes()) > 0:
				pem = ca.GetInlineBytes()
			default:
				return nil, fmt.Errorf("%s: trusted_ca: %w: only filename, inline_string or inline_bytes", where, ErrUnsupported)
			}
			t.roots = x509.NewCertPool()
			if !t.roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s: trusted_ca holds no PEM certificate", where)
			}
		}
	}
	return t, nil
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
