package envoy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

const composeEnvoy = "envoy/compose/envoy.yaml"

func loadCompose(t *testing.T) (*bootstrapv3.Bootstrap, *config.Config) {
	t.Helper()
	bs, err := envoy.LoadBootstrap(filepath.Join(repoRoot, composeEnvoy))
	if err != nil {
		t.Fatal(err)
	}
	return bs, loadKeypoolConfig(t, "envoy/compose/keypool.yaml")
}

func clusterNamed(t *testing.T, bs *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

// repack decodes a typed config into m, lets edit change it and packs it back.
func repack[M proto.Message](t *testing.T, a *anypb.Any, m M, edit func(M)) *anypb.Any {
	t.Helper()
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	out, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func editOptions(t *testing.T, c *clusterv3.Cluster, edit func(*httpv3.HttpProtocolOptions)) {
	t.Helper()
	key := "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	c.TypedExtensionProtocolOptions[key] = repack(t, c.TypedExtensionProtocolOptions[key], &httpv3.HttpProtocolOptions{}, edit)
}

func editExtProc(t *testing.T, c *clusterv3.Cluster, edit func(*extprocv3.ExternalProcessor)) {
	t.Helper()
	editOptions(t, c, func(o *httpv3.HttpProtocolOptions) {
		f := o.HttpFilters[0]
		f.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: repack(t, f.GetTypedConfig(), &extprocv3.ExternalProcessor{}, edit)}
	})
}

func editHCM(t *testing.T, bs *bootstrapv3.Bootstrap, edit func(*hcmv3.HttpConnectionManager)) {
	t.Helper()
	f := bs.StaticResources.Listeners[0].FilterChains[0].Filters[0]
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: repack(t, f.GetTypedConfig(), &hcmv3.HttpConnectionManager{}, edit)}
}

// openAIRoute returns the openai route of the route table.
func openAIRoute(h *hcmv3.HttpConnectionManager) *routev3.Route {
	for _, r := range h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes() {
		if r.GetName() == "openai" {
			return r
		}
	}
	return nil
}

// moveRetryPolicy takes the openai cluster's retry policy off the cluster and gives it
// to the route or virtual host through put.
func moveRetryPolicy(t *testing.T, bs *bootstrapv3.Bootstrap, put func(*hcmv3.HttpConnectionManager, *routev3.RetryPolicy)) {
	t.Helper()
	var rp *routev3.RetryPolicy
	editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) {
		rp, o.RetryPolicy = o.RetryPolicy, nil
	})
	editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { put(h, rp) })
}

// Each rule of CheckLoad and CheckKeypool, broken once in an otherwise good
// bootstrap, fails with a message that says what is wrong and where.
func TestChecksCatchBrokenBootstraps(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, bs *bootstrapv3.Bootstrap, cfg *config.Config)
		load   bool     // CheckLoad's rule (else CheckKeypool's)
		want   []string // each must appear in the error; none: the check passes
	}{
		// Envoy's load-time rules.
		{"upstream chain without the codec", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.HttpFilters = o.HttpFilters[:1] })
		}, true, []string{`cluster "openai"`, "http_filters", `ends with "envoy.filters.http.ext_proc"`, "envoy.filters.http.upstream_codec last"}},
		{"codec not last", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) {
				o.HttpFilters[0], o.HttpFilters[1] = o.HttpFilters[1], o.HttpFilters[0]
			})
		}, true, []string{"terminal but not last"}},
		{"route to a renamed cluster", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, "openai").Name = "openai-renamed"
		}, true, []string{`route[`, `"openai"`, `unknown cluster "openai"`}},
		{"ext_proc naming a missing cluster", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, envoy.KeypoolCluster).Name = "keypool"
		}, true, []string{`ext_proc grpc_service names unknown cluster "envoy_keypool"`}},
		{"ext_proc cluster over HTTP/1.1", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, envoy.KeypoolCluster), func(o *httpv3.HttpProtocolOptions) {
				o.GetExplicitHttpConfig().ProtocolConfig = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}}
			})
		}, true, []string{`ext_proc cluster "envoy_keypool" must speak HTTP/2`}},
		{"duplicate cluster", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			sr := bs.StaticResources
			sr.Clusters = append(sr.Clusters, proto.Clone(sr.Clusters[0]).(*clusterv3.Cluster))
		}, true, []string{`cluster name "openai" is also clusters[0]'s`}},
		{"connection manager without the router", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { h.HttpFilters = nil })
		}, true, []string{"the chain must end with envoy.filters.http.router"}},

		// envoy-keypool's rules.
		{"num_retries below the pool size", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.NumRetries = wrapperspb.UInt32(2) })
		}, false, []string{`cluster retry_policy: num_retries 2 is below the 5 keys of pool "openai"`}},
		{"pool grown in the envoy-keypool config only", func(t *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			p, _ := cfg.Pool("anthropic")
			p.Keys = append(p.Keys, config.Key{ID: "anthropic-4", Secret: "env:ANTHROPIC_API_KEY_4"})
		}, false, []string{`num_retries 3 is below the 4 keys of pool "anthropic"`}},
		{"retry on another header", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.RetriableHeaders[0].Name = "x-retry" })
		}, false, []string{"retriable_headers lacks {name: x-keypool-retry, present_match: true}"}},
		{"marker renamed in the envoy-keypool config only", func(_ *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			cfg.Envoy.RetryMarkerHeader = "x-pool-retry"
		}, false, []string{"lacks {name: x-pool-retry", "x-pool-retry is in no response_headers_to_remove"}},
		{"retry after a reset may bill twice", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.RetryOn = "retriable-headers,reset" })
		}, false, []string{`retry_on "reset" retries requests the provider may have run and billed`}},
		{"retry_on without retriable-headers", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.RetryOn = "connect-failure" })
		}, false, []string{`retry_on "connect-failure" lacks retriable-headers`}},
		{"no retry policy anywhere", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy = nil })
		}, false, []string{"no retry policy on the cluster, route or virtual host"}},
		{"retry policy on the route instead of the cluster", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			moveRetryPolicy(t, bs, func(h *hcmv3.HttpConnectionManager, rp *routev3.RetryPolicy) {
				openAIRoute(h).GetRoute().RetryPolicy = rp
			})
		}, false, nil},
		{"retry policy on the virtual host instead of the cluster", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			moveRetryPolicy(t, bs, func(h *hcmv3.HttpConnectionManager, rp *routev3.RetryPolicy) {
				h.GetRouteConfig().GetVirtualHosts()[0].RetryPolicy = rp
			})
		}, false, nil},
		{"cluster policy replaces a good route policy", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			var good *routev3.RetryPolicy
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) {
				good = proto.Clone(o.RetryPolicy).(*routev3.RetryPolicy)
				o.RetryPolicy.NumRetries = wrapperspb.UInt32(1)
			})
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { openAIRoute(h).GetRoute().RetryPolicy = good })
		}, false, []string{"cluster retry_policy: num_retries 1 is below"}},
		{"marker not removed from responses", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { h.GetRouteConfig().ResponseHeadersToRemove = nil })
		}, false, []string{"x-keypool-retry is in no response_headers_to_remove"}},
		{"retry circuit breaker left at Envoy's 3", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, "openai").CircuitBreakers = nil
		}, false, []string{"circuit_breakers max_retries 3 is below max_requests 1024"}},
		{"retry budget below 100%", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, "openai").CircuitBreakers.Thresholds[0].RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{}
		}, false, []string{"retry_budget below 100%"}},
		{"no body buffered for replay", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { openAIRoute(h).RequestBodyBufferLimit = nil })
		}, false, []string{"no request_body_buffer_limit"}},
		{"no attempt count header", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().GetVirtualHosts()[0].IncludeRequestAttemptCount = false
			})
		}, false, []string{"include_request_attempt_count"}},
		{"client-chosen x-request-id", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { h.PreserveExternalRequestId = true })
		}, false, []string{"preserve_external_request_id unset"}},
		{"failure mode allow", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) { ep.FailureModeAllow = true })
		}, false, []string{"envoy-keypool filter: failure_mode_allow true"}},
		{"response headers not sent", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) {
				ep.ProcessingMode.ResponseHeaderMode = extprocv3.ProcessingMode_SKIP
			})
		}, false, []string{"response_header_mode SKIP, want SEND"}},
		{"request body sent", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) {
				ep.ProcessingMode.RequestBodyMode = extprocv3.ProcessingMode_BUFFERED
			})
		}, false, []string{"request_body_mode BUFFERED, want NONE"}},
		{"filter names a pool the config lacks", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) {
				ep.GrpcService.InitialMetadata[0].Value = "ghost"
			})
		}, false, []string{`names pool "ghost"`, `pool "openai" has no route`}},
		{"pool named under another metadata key", func(_ *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			cfg.Envoy.PoolMetadataKey = "x-pool"
		}, false, []string{`0 "x-pool" entries`}},
		{"route to a cluster without envoy-keypool", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.HttpFilters = o.HttpFilters[1:] })
		}, false, []string{`0 envoy-keypool ext_proc filters`}},
		{"envoy-keypool cluster not health checked", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, envoy.KeypoolCluster).HealthChecks = nil
		}, false, []string{"no grpc_health_check"}},
		{"replica list drifted", func(_ *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			cfg.Envoy.KeypoolAddresses = append(cfg.Envoy.KeypoolAddresses, "envoy-keypool-3:9001")
		}, false, []string{"envoy.keypool_addresses says"}},
		{"too few ext_proc streams for the provider requests", func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, envoy.KeypoolCluster).CircuitBreakers = nil
		}, false, []string{"max_requests 1024 is below the 6144 provider requests"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs, cfg := loadCompose(t)
			tt.mutate(t, bs, cfg)
			check := func() error { return envoy.CheckKeypool(bs, cfg) }
			if tt.load {
				check = func() error { return envoy.CheckLoad(bs) }
			}
			err := check()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("want no error, got:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("the check passed")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

// What Envoy refuses while parsing the YAML, before any of the checks: an unknown
// field (at the top or inside a typed config), a typed config of an unknown type, and
// a value the protos' validation rules forbid, nested in a typed config included.
func TestLoadRefusesWhatEnvoyRefuses(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(repoRoot, composeEnvoy))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(string) string
		want string
	}{
		{"unknown top-level field", func(s string) string { return s + "overlord: {}\n" }, `unknown field "overlord"`},
		{"unknown field in a typed config", func(s string) string {
			return addSibling(s, "failure_mode_allow: false", "fail_open: true")
		}, `unknown field "fail_open"`},
		{"misspelt type URL", func(s string) string {
			return strings.Replace(s, "ext_proc.v3.ExternalProcessor", "ext_proc.v3.ExternalProcesor", 1)
		}, "ExternalProcesor"},
		{"zero retry back-off", func(s string) string {
			return strings.Replace(s, "base_interval: 0.010s", "base_interval: 0s", 1)
		}, "BaseInterval"},
		{"message_timeout beyond the proto's bound", func(s string) string {
			return strings.Replace(s, "message_timeout: 0.200s", "message_timeout: 7200s", 1)
		}, "MessageTimeout"},
		{"cluster without a name", func(s string) string {
			return strings.Replace(s, "- name: envoy_keypool", `- name: ""`, 1)
		}, "Name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := tt.edit(string(good))
			if bad == string(good) {
				t.Fatal("the edit changed nothing")
			}
			_, err := envoy.ParseBootstrap([]byte(bad))
			if err == nil {
				t.Fatal("ParseBootstrap accepted it")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error does not contain %q:\n%v", tt.want, err)
			}
		})
	}
}

// addSibling adds line after the first line containing anchor, at the same indent.
func addSibling(s, anchor, line string) string {
	i := strings.Index(s, anchor)
	if i < 0 {
		return s
	}
	start := strings.LastIndex(s[:i], "\n") + 1
	end := i + strings.Index(s[i:], "\n")
	return s[:end+1] + s[start:i] + line + "\n" + s[end+1:]
}
