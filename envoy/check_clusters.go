package envoy

import (
	"net"
	"net/url"
	"slices"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// checkProviderCluster checks the pool's provider cluster once.
func (k *keypoolChecker) checkProviderCluster(cl *clusterEntry, pool *config.Pool) {
	if !k.once(cl.path) {
		return
	}
	maxRequests, maxRetries := envoyDefaultMaxRequests, 3 // circuit_breaker.proto defaults
	cbPath := cl.path.f("circuit_breakers.thresholds")
	var budget bool
	for i, t := range cl.cluster.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		cbPath = cl.path.f("circuit_breakers.thresholds").i(i)
		if t.GetMaxRequests() != nil {
			maxRequests = int(t.GetMaxRequests().GetValue())
		}
		if t.GetMaxRetries() != nil {
			maxRetries = int(t.GetMaxRetries().GetValue())
		}
		if b := t.GetRetryBudget(); b != nil {
			budget = true
			// A retry budget replaces max_retries (circuit_breaker.proto).
			if pct := b.GetBudgetPercent(); pct == nil || pct.GetValue() < 100 {
				k.add(cbPath.f("retry_budget.budget_percent").problem("below 100%%: in a rate limit storm some requests cannot fail over and their 429 reaches the client"))
			}
		}
	}
	if !budget && maxRetries < maxRequests {
		k.add(cbPath.f("max_retries").problem("%d is below max_requests %d: when a key hits its rate limit every request in flight retries at once, and past max_retries Envoy forwards the 429 instead", maxRetries, maxRequests))
	}
	k.providerRequests += maxRequests

	idle, idleSet := time.Hour, false // HttpProtocolOptions.idle_timeout default
	if o := cl.options.GetCommonHttpProtocolOptions(); o.GetIdleTimeout() != nil {
		idle, idleSet = o.GetIdleTimeout().AsDuration(), true
	}
	if want := pool.Route.EffectiveIdleTimeout(); idle == 0 || idle > want {
		what := idle.String()
		switch {
		case !idleSet:
			what = "unset (1h)"
		case idle == 0:
			what = "0 (never)"
		}
		k.add(cl.optPath.f("common_http_protocol_options.idle_timeout").problem("%s is above route.idle_timeout %s: a request may go out on a connection the provider is closing, and that reset reaches the client", what, want))
	}
	if u, err := url.Parse(pool.Route.Upstream); err == nil && u.Scheme == "https" {
		k.checkProviderTLS(cl, u.Hostname())
	}
}

// checkProviderTLS: pool keys go only to the provider, over TLS, its certificate
// checked against a CA and its name.
func (k *keypoolChecker) checkProviderTLS(cl *clusterEntry, host string) {
	ts := cl.cluster.GetTransportSocket()
	at := cl.path.f("transport_socket")
	if ts.GetTypedConfig().GetTypeUrl() != typeUpstreamTLS {
		k.add(at.problem("no TLS to %s (https in route.upstream): pool keys would cross the network in plaintext", host))
		return
	}
	tc := upstreamTLSContext(ts)
	if tc == nil {
		k.add(at.f("typed_config").problem("does not decode as an UpstreamTlsContext"))
		return
	}
	common := tc.GetCommonTlsContext()
	vc := common.GetValidationContext()
	if vc == nil {
		vc = common.GetCombinedValidationContext().GetDefaultValidationContext()
	}
	vcPath := at.f("typed_config.common_tls_context.validation_context")
	sdsCA := common.GetValidationContextSdsSecretConfig() != nil || common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig() != nil
	if vc.GetTrustedCa() == nil && vc.GetSystemRootCerts() == nil && !sdsCA {
		k.add(vcPath.f("trusted_ca").problem("unset: Envoy accepts any certificate, and pool keys go to whoever answers for %s", host))
	}
	autoSAN := cl.options.GetUpstreamHttpProtocolOptions().GetAutoSanValidation()
	if len(vc.GetMatchTypedSubjectAltNames()) == 0 && !autoSAN {
		k.add(vcPath.f("match_typed_subject_alt_names").problem("empty: Envoy checks the chain but not the name (tls/v3/common.proto), and pool keys go to any host with a certificate from a trusted CA; match DNS %q", host))
	}
}

// checkKeypoolClusters checks each envoy-keypool cluster the filters name.
func (k *keypoolChecker) checkKeypoolClusters() {
	for _, name := range sortedKeys(k.keypool) {
		cl, ok := k.ix.cluster(name)
		if !ok {
			continue // CheckLoad's
		}
		use := k.keypool[name]
		c := cl.cluster
		hasGRPCHealth := false
		for _, hc := range c.GetHealthChecks() {
			if hc.GetGrpcHealthCheck() != nil {
				hasGRPCHealth = true
			}
		}
		if !hasGRPCHealth {
			k.add(cl.path.f("health_checks").problem("no grpc_health_check: a replica that is draining or down keeps receiving ext_proc streams"))
		}
		if got, ok := staticEndpoints(cl); ok && !sameSet(got, canonicalAddresses(k.cfg.Envoy.KeypoolAddresses)) {
			k.add(cl.path.f("load_assignment").problem("endpoints %v, but envoy.keypool_addresses says %v", got, k.cfg.Envoy.KeypoolAddresses))
		}
		connect := 5 * time.Second // Cluster.connect_timeout default
		if c.GetConnectTimeout() != nil {
			connect = c.GetConnectTimeout().AsDuration()
		}
		if connect >= use.minMessageTimeout {
			k.add(cl.path.f("connect_timeout").problem("%s is not below message_timeout %s: a connect to a replica that is gone uses up the message's time before the stream can move to another replica", connect, use.minMessageTimeout))
		}
		if cl.options.GetExplicitHttpConfig().GetHttp2ProtocolOptions().GetConnectionKeepalive() == nil {
			k.add(cl.optPath.f("explicit_http_config.http2_protocol_options.connection_keepalive").problem("unset: a replica that vanished without closing its connections (host down, network cut) keeps getting streams, each failing after message_timeout"))
		}
		maxRequests, maxRetries := envoyDefaultMaxRequests, 3
		cbPath := cl.path.f("circuit_breakers.thresholds")
		for i, t := range c.GetCircuitBreakers().GetThresholds() {
			if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
				continue
			}
			cbPath = cl.path.f("circuit_breakers.thresholds").i(i)
			if t.GetMaxRequests() != nil {
				maxRequests = int(t.GetMaxRequests().GetValue())
			}
			if t.GetMaxRetries() != nil {
				maxRetries = int(t.GetMaxRetries().GetValue())
			}
		}
		if maxRequests < k.providerRequests {
			k.add(cbPath.f("max_requests").problem("%d is below the %d provider requests the routes allow in flight: each holds an ext_proc stream, and the ones past the limit fail with 500", maxRequests, k.providerRequests))
		}
		if use.streamRetries && maxRetries < maxRequests {
			k.add(cbPath.f("max_retries").problem("%d is below max_requests %d: when a replica goes, its streams retry on another at once, and past max_retries they fail with 500 (retry_state_impl.cc shouldRetry)", maxRetries, maxRequests))
		}
		k.checkKeypoolTLS(cl)
	}
}

func (k *keypoolChecker) checkKeypoolTLS(cl *clusterEntry) {
	ts := cl.cluster.GetTransportSocket()
	at := cl.path.f("transport_socket")
	want := k.cfg.Envoy.KeypoolTLS
	isTLS := ts.GetTypedConfig().GetTypeUrl() == typeUpstreamTLS
	switch {
	case want != nil && !isTLS:
		k.add(at.problem("no TLS, but envoy.keypool_tls says envoy-keypool is reached over TLS"))
	case want == nil && isTLS:
		k.add(at.problem("TLS, but envoy.keypool_tls is unset: envoy-keypool's config and this cluster disagree"))
	case want != nil:
		tc := upstreamTLSContext(ts)
		if want.CertFile != "" && len(tc.GetCommonTlsContext().GetTlsCertificates()) == 0 && len(tc.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()) == 0 {
			k.add(at.f("typed_config.common_tls_context.tls_certificates").problem("empty, but envoy.keypool_tls has a client certificate: envoy-keypool's mutual TLS refuses Envoy"))
		}
		if !slices.Contains(tc.GetCommonTlsContext().GetAlpnProtocols(), "h2") {
			k.add(at.f("typed_config.common_tls_context.alpn_protocols").problem("lacks h2: gRPC servers refuse a TLS connection that does not offer it"))
		}
	}
}

// canonicalAddresses spells every unix: address as staticEndpoints does.
func canonicalAddresses(list []string) []string {
	out := make([]string, len(list))
	for i, a := range list {
		out[i] = a
		if p, ok := config.KeypoolSocketPath(a); ok {
			out[i] = "unix:" + p
		}
	}
	return out
}

// staticEndpoints lists the endpoints of a cluster that carries them itself (not EDS),
// as envoy.keypool_addresses spells them.
func staticEndpoints(cl *clusterEntry) ([]string, bool) {
	if cl.cluster.GetType() == clusterv3.Cluster_EDS || cl.cluster.GetClusterType() != nil || cl.cluster.GetLoadAssignment() == nil {
		return nil, false
	}
	var got []string
	for _, lle := range cl.cluster.GetLoadAssignment().GetEndpoints() {
		for _, lbe := range lle.GetLbEndpoints() {
			a := lbe.GetEndpoint().GetAddress()
			if p := a.GetPipe(); p != nil {
				got = append(got, "unix:"+p.GetPath())
				continue
			}
			sa := a.GetSocketAddress()
			got = append(got, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
		}
	}
	return got, true
}
