package envoy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matchingv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
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

// loadExample is the shipped envoy/envoy.yaml (real providers over TLS) and its config.
func loadExample(t *testing.T) (*bootstrapv3.Bootstrap, *config.Config) {
	t.Helper()
	bs, err := envoy.LoadBootstrap(filepath.Join(repoRoot, "envoy/envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return bs, loadKeypoolConfig(t, "config/example.yaml")
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

// Paths the checks name, in the compose bootstrap (routes sorted longest prefix first:
// openai-byok, anthropic, openai).
const (
	httpOpts     = `typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]`
	openaiOpts   = `cluster "openai": ` + httpOpts
	openaiFilter = openaiOpts + ".http_filters[0].typed_config"
	keypoolPath  = `cluster "envoy_keypool"`
	hcmPath      = `listener "llm": filter_chains[0].filters[0].typed_config`
	vhostPath    = hcmPath + ".route_config.virtual_hosts[0]"
	openaiRoute  = vhostPath + ".routes[2]"
)

// problem is one finding a test expects: its exact field path and part of its message.
type problem struct{ path, msg string }

// Each rule of CheckLoad and CheckKeypool, broken once in an otherwise good
// bootstrap, is reported on the field that breaks it, with a message that says what
// it costs. The compose bootstrap is the base; "example" cases use the shipped
// envoy/envoy.yaml (https providers).
func TestChecksNameTheBrokenField(t *testing.T) {
	// One ext_proc stream per provider request: 1024 per compose pool.
	streams := fmt.Sprint(1024 * len(loadKeypoolConfig(t, "envoy/compose/keypool.yaml").Pools))
	tests := []struct {
		name    string
		example bool
		mutate  func(t *testing.T, bs *bootstrapv3.Bootstrap, cfg *config.Config)
		load    bool      // CheckLoad's rule (else CheckKeypool's)
		want    []problem // each must be reported; none: the check passes
	}{
		// Envoy's load-time rules.
		{"upstream chain without the codec", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.HttpFilters = o.HttpFilters[:1] })
		}, true, []problem{{openaiOpts + ".http_filters[0]", `ends with "envoy-keypool"; Envoy requires envoy.filters.http.upstream_codec last`}}},
		{"codec not last", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) {
				o.HttpFilters[0], o.HttpFilters[1] = o.HttpFilters[1], o.HttpFilters[0]
			})
		}, true, []problem{{openaiOpts + ".http_filters[0]", "terminal but not last"}}},
		{"route to a renamed cluster", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, "openai").Name = "openai-renamed"
		}, true, []problem{{openaiRoute + ".route", `unknown cluster "openai"`}}},
		{"ext_proc naming a missing cluster", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, envoy.KeypoolCluster).Name = "keypool"
		}, true, []problem{{openaiFilter + ".grpc_service.envoy_grpc.cluster_name", `unknown cluster "envoy_keypool"`}}},
		{"ext_proc cluster over HTTP/1.1", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, envoy.KeypoolCluster), func(o *httpv3.HttpProtocolOptions) {
				o.GetExplicitHttpConfig().ProtocolConfig = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}}
			})
		}, true, []problem{{openaiFilter + ".grpc_service.envoy_grpc.cluster_name", `cluster "envoy_keypool" must speak HTTP/2`}}},
		{"duplicate cluster", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			sr := bs.StaticResources
			sr.Clusters = append(sr.Clusters, proto.Clone(sr.Clusters[0]).(*clusterv3.Cluster))
		}, true, []problem{{`cluster "openai"`, "also clusters[0]'s"}}},
		{"connection manager without the router", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { h.HttpFilters = nil })
		}, true, []problem{{hcmPath + ".http_filters", "must end with envoy.filters.http.router"}}},

		// The key failover retry policy.
		{"num_retries below the pool size", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.NumRetries = wrapperspb.UInt32(2) })
		}, false, []problem{{openaiOpts + ".retry_policy.num_retries", `2 is below the 5 keys of pool "openai"`}}},
		{"pool grown in the envoy-keypool config only", false, func(t *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			p, _ := cfg.Pool("anthropic")
			p.Keys = append(p.Keys, config.Key{ID: "anthropic-4"}, config.Key{ID: "anthropic-5"})
		}, false, []problem{{`cluster "anthropic": ` + httpOpts + ".retry_policy.num_retries", `4 is below the 5 keys of pool "anthropic"`}}},
		{"retry on another header", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.RetriableHeaders[0].Name = "x-retry" })
		}, false, []problem{{openaiOpts + ".retry_policy.retriable_headers", "lacks {name: x-keypool-retry, present_match: true}"}}},
		{"marker renamed in the envoy-keypool config only", false, func(_ *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			cfg.Envoy.RetryMarkerHeader = "x-pool-retry"
		}, false, []problem{
			{openaiOpts + ".retry_policy.retriable_headers", "lacks {name: x-pool-retry"},
			{openaiRoute + ".response_headers_to_remove", "x-pool-retry is not removed"},
		}},
		{"retry after a reset may bill twice", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.RetryOn = "retriable-headers,reset" })
		}, false, []problem{{openaiOpts + ".retry_policy.retry_on", `"reset" retries resets after the request left`}}},
		{"retry on 5xx may bill twice", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.RetryOn = "5xx,retriable-headers" })
		}, false, []problem{{openaiOpts + ".retry_policy.retry_on", `"5xx" retries 5xx answers`}}},
		{"retry on a status that may be billed", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) {
				o.RetryPolicy.RetryOn = "retriable-headers,retriable-status-codes"
				o.RetryPolicy.RetriableStatusCodes = []uint32{429, 500}
			})
		}, false, []problem{{openaiOpts + ".retry_policy.retriable_status_codes[1]", "500: the provider may have run the request"}}},
		{"retry on statuses the provider refuses before running", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) {
				o.RetryPolicy.RetryOn = "retriable-headers,retriable-status-codes,connect-failure"
				o.RetryPolicy.RetriableStatusCodes = []uint32{401, 429}
			})
		}, false, nil},
		{"a retry condition Envoy ignores", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.RetryOn = "retriable-headers,reset-before-requests" })
		}, false, []problem{{openaiOpts + ".retry_policy.retry_on", `"reset-before-requests" is no retry condition Envoy knows`}}},
		{"retry_on without retriable-headers", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy.RetryOn = "connect-failure" })
		}, false, []problem{{openaiOpts + ".retry_policy.retry_on", `"connect-failure" lacks retriable-headers`}}},
		{"no retry policy anywhere", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.RetryPolicy = nil })
		}, false, []problem{{openaiRoute, `no retry policy on cluster "openai", the route or its virtual host`}}},
		{"retry policy on the route instead of the cluster", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			moveRetryPolicy(t, bs, func(h *hcmv3.HttpConnectionManager, rp *routev3.RetryPolicy) {
				openAIRoute(h).GetRoute().RetryPolicy = rp
			})
		}, false, nil},
		{"retry policy on the virtual host instead of the cluster", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			moveRetryPolicy(t, bs, func(h *hcmv3.HttpConnectionManager, rp *routev3.RetryPolicy) {
				h.GetRouteConfig().GetVirtualHosts()[0].RetryPolicy = rp
			})
		}, false, nil},
		{"route policy with too few retries", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			moveRetryPolicy(t, bs, func(h *hcmv3.HttpConnectionManager, rp *routev3.RetryPolicy) {
				rp.NumRetries = nil
				openAIRoute(h).GetRoute().RetryPolicy = rp
			})
		}, false, []problem{{openaiRoute + ".route.retry_policy.num_retries", "1 is below the 5 keys"}}},
		{"cluster policy replaces a good route policy", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			var good *routev3.RetryPolicy
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) {
				good = proto.Clone(o.RetryPolicy).(*routev3.RetryPolicy)
				o.RetryPolicy.NumRetries = wrapperspb.UInt32(1)
			})
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { openAIRoute(h).GetRoute().RetryPolicy = good })
		}, false, []problem{{openaiOpts + ".retry_policy.num_retries", "1 is below"}}},

		// Routes and virtual host.
		{"marker not removed from responses", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { h.GetRouteConfig().ResponseHeadersToRemove = nil })
		}, false, []problem{{openaiRoute + ".response_headers_to_remove", "x-keypool-retry is not removed"}}},
		{"no body buffered for replay", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { openAIRoute(h).RequestBodyBufferLimit = nil })
		}, false, []problem{{openaiRoute + ".request_body_buffer_limit", "never retried with the next key"}}},
		{"no attempt count header", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) {
				h.GetRouteConfig().GetVirtualHosts()[0].IncludeRequestAttemptCount = false
			})
		}, false, []problem{{vhostPath + ".include_request_attempt_count", "envoy-keypool reads x-envoy-attempt-count"}}},

		// The connection manager.
		{"client-chosen x-request-id kept", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { h.PreserveExternalRequestId = true })
		}, false, []problem{{hcmPath + ".preserve_external_request_id", "share their tried keys"}}},
		{"client addresses not Envoy's", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { h.UseRemoteAddress = nil })
		}, false, []problem{{hcmPath + ".use_remote_address", "keeps the x-request-id a client sends"}}},
		{"no request id generated", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { h.GenerateRequestId = wrapperspb.Bool(false) })
		}, false, []problem{{hcmPath + ".generate_request_id", "needs x-request-id"}}},
		{"empty internal_address_config trusts private networks", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) {
				h.InternalAddressConfig = &hcmv3.HttpConnectionManager_InternalAddressConfig{}
			})
		}, false, []problem{{hcmPath + ".internal_address_config", "every client from a private, loopback or unique-local address is internal"}}},
		{"internal_address_config trusting client ranges", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) {
				h.InternalAddressConfig = &hcmv3.HttpConnectionManager_InternalAddressConfig{
					CidrRanges: []*corev3.CidrRange{{AddressPrefix: "10.0.0.0", PrefixLen: wrapperspb.UInt32(8)}},
				}
			})
		}, false, []problem{{hcmPath + ".internal_address_config.cidr_ranges", "keep the x-request-id they send"}}},
		{"envoy-keypool in the downstream chain", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			var f *hcmv3.HttpFilter
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { f = proto.Clone(o.HttpFilters[0]).(*hcmv3.HttpFilter) })
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { h.HttpFilters = append([]*hcmv3.HttpFilter{f}, h.HttpFilters...) })
		}, false, []problem{{hcmPath + ".http_filters[0]", "one stream per request, not one per attempt"}}},
		{"json_to_metadata that can answer 413", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) {
				w := &matchingv3.ExtensionWithMatcher{}
				if err := h.HttpFilters[0].GetTypedConfig().UnmarshalTo(w); err != nil {
					t.Fatal(err)
				}
				h.HttpFilters[0].ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: w.GetExtensionConfig().GetTypedConfig()}
			})
		}, false, []problem{{hcmPath + ".http_filters[0].typed_config", "answered 413"}}},

		// The envoy-keypool filter.
		{"failure mode allow", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) { ep.FailureModeAllow = true })
		}, false, []problem{{openaiFilter + ".failure_mode_allow", "requests go to the provider with no pool key"}}},
		{"response headers not sent", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) {
				ep.ProcessingMode.ResponseHeaderMode = extprocv3.ProcessingMode_SKIP
			})
		}, false, []problem{{openaiFilter + ".processing_mode.response_header_mode", "SKIP, want SEND"}}},
		{"request body sent", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) {
				ep.ProcessingMode.RequestBodyMode = extprocv3.ProcessingMode_BUFFERED
			})
		}, false, []problem{{openaiFilter + ".processing_mode.request_body_mode", "BUFFERED, want NONE"}}},
		{"message_timeout below the Redis bound", false, func(_ *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			cfg.State.Redis.Timeout = config.Duration(250 * time.Millisecond)
		}, false, []problem{{openaiFilter + ".message_timeout", "200ms is not above envoy-keypool's state.redis.timeout 250ms"}}},
		{"mode override not allowed", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) { ep.AllowModeOverride = false })
		}, false, []problem{{openaiFilter + ".allow_mode_override", "reaches the client without failover"}}},
		{"no mode override, body classification off", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, cfg *config.Config) {
			off := false
			cfg.Envoy.ClassifyErrorBodies = &off
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) { ep.AllowModeOverride = false })
		}, false, nil},
		{"mode override allowed for other modes only", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) {
				ep.AllowedOverrideModes[0].ResponseBodyMode = extprocv3.ProcessingMode_STREAMED
			})
		}, false, []problem{{openaiFilter + ".allowed_override_modes", "lacks {response_header_mode: SEND, request_body_mode: NONE, response_body_mode: BUFFERED"}}},
		{"mode override allowed for any mode", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) { ep.AllowedOverrideModes = nil })
		}, false, nil},
		{"no stream retry", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) { ep.GrpcService.RetryPolicy = nil })
		}, false, []problem{{openaiFilter + ".grpc_service.retry_policy", "fails its request with 500 instead of moving to another replica"}}},
		{"stream retry with the default back-off", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) { ep.GrpcService.RetryPolicy.RetryBackOff = nil })
		}, false, []problem{{openaiFilter + ".grpc_service.retry_policy.retry_back_off", "(1s when unset) does not fit twice in message_timeout 200ms"}}},
		{"stream retry on gRPC statuses only", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) { ep.GrpcService.RetryPolicy.RetryOn = "unavailable" })
		}, false, []problem{{openaiFilter + ".grpc_service.retry_policy.retry_on", "retries neither a refused connection"}}},
		{"filter names a pool the config lacks", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editExtProc(t, clusterNamed(t, bs, "openai"), func(ep *extprocv3.ExternalProcessor) {
				ep.GrpcService.InitialMetadata[0].Value = "ghost"
			})
		}, false, []problem{
			{openaiFilter + ".grpc_service.initial_metadata", `names pool "ghost"`},
			{"envoy-keypool config: pools[0]", `pool "openai" has no route`},
		}},
		{"pool named under another metadata key", false, func(_ *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			cfg.Envoy.PoolMetadataKey = "x-pool"
		}, false, []problem{{"envoy-keypool config: pools[0]", `pool "openai" has no route`}}},
		{"route to a cluster without envoy-keypool", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.HttpFilters = o.HttpFilters[1:] })
		}, false, []problem{
			{"envoy-keypool config: pools[0]", `pool "openai" has no route`},
			{`cluster "openai": load_assignment`, `reaches mock-provider, the upstream of pool "openai", "anthropic"`},
		}},
		{"route config for another ext_proc filter of the same name", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.HttpFilters[0].Name = "envoy.filters.http.ext_proc" })
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) {
				a, err := anypb.New(&extprocv3.ExtProcPerRoute{Override: &extprocv3.ExtProcPerRoute_Disabled{Disabled: true}})
				if err != nil {
					t.Fatal(err)
				}
				openAIRoute(h).TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.ext_proc": a}
			})
		}, false, []problem{{openaiRoute + `.typed_per_filter_config["envoy.filters.http.ext_proc"]`, "switches envoy-keypool's filter \"envoy.filters.http.ext_proc\" off"}}},
		{"envoy-keypool disabled on a virtual host", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) {
				a, err := anypb.New(&routev3.FilterConfig{Disabled: true})
				if err != nil {
					t.Fatal(err)
				}
				h.GetRouteConfig().GetVirtualHosts()[0].TypedPerFilterConfig = map[string]*anypb.Any{envoy.KeypoolFilterName: a}
			})
		}, false, []problem{{vhostPath + `.typed_per_filter_config["envoy-keypool"]`, "disables envoy-keypool's filter"}}},
		{"two envoy-keypool filters in one chain", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) {
				o.HttpFilters = append([]*hcmv3.HttpFilter{o.HttpFilters[0]}, o.HttpFilters...)
			})
		}, false, []problem{{openaiOpts + ".http_filters[1]", "a second envoy-keypool ext_proc filter"}}},

		// The provider cluster.
		{"retry circuit breaker left at Envoy's 3", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, "openai").CircuitBreakers = nil
		}, false, []problem{{`cluster "openai": circuit_breakers.thresholds.max_retries`, "3 is below max_requests 1024"}}},
		{"retry budget below 100%", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, "openai").CircuitBreakers.Thresholds[0].RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{}
		}, false, []problem{{`cluster "openai": circuit_breakers.thresholds[0].retry_budget.budget_percent`, "below 100%"}}},
		{"provider connections idle for Envoy's hour", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, "openai"), func(o *httpv3.HttpProtocolOptions) { o.CommonHttpProtocolOptions = nil })
		}, false, []problem{{openaiOpts + ".common_http_protocol_options.idle_timeout", "unset (1h) is above route.idle_timeout 1m0s"}}},
		{"provider over plaintext", true, func(_ *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, "openai").TransportSocket = nil
		}, false, []problem{{`cluster "openai": transport_socket`, "no TLS to api.openai.com"}}},
		{"provider name not checked", true, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			c := clusterNamed(t, bs, "openai")
			c.TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: repack(t, c.TransportSocket.GetTypedConfig(), &tlsv3.UpstreamTlsContext{}, func(tc *tlsv3.UpstreamTlsContext) {
				tc.GetCommonTlsContext().GetValidationContext().MatchTypedSubjectAltNames = nil
			})}
		}, false, []problem{{`cluster "openai": transport_socket.typed_config.common_tls_context.validation_context.match_typed_subject_alt_names`, `match DNS "api.openai.com"`}}},

		// The envoy-keypool cluster.
		{"envoy-keypool cluster not health checked", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, envoy.KeypoolCluster).HealthChecks = nil
		}, false, []problem{{keypoolPath + ": health_checks", "no grpc_health_check"}}},
		{"replica list drifted", false, func(_ *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			cfg.Envoy.KeypoolAddresses = append(cfg.Envoy.KeypoolAddresses, "envoy-keypool-3:9001")
		}, false, []problem{{keypoolPath + ": load_assignment", "envoy.keypool_addresses says"}}},
		{"too few ext_proc streams for the provider requests", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, envoy.KeypoolCluster).CircuitBreakers = nil
		}, false, []problem{
			{keypoolPath + ": circuit_breakers.thresholds.max_requests", "1024 is below the " + streams + " provider requests"},
			{keypoolPath + ": circuit_breakers.thresholds.max_retries", "3 is below max_requests 1024"},
		}},
		{"stream retries past Envoy's 3", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, envoy.KeypoolCluster).CircuitBreakers.Thresholds[0].MaxRetries = nil
		}, false, []problem{{keypoolPath + ": circuit_breakers.thresholds[0].max_retries", "3 is below max_requests " + streams}}},
		{"connect timeout past message_timeout", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			clusterNamed(t, bs, envoy.KeypoolCluster).ConnectTimeout = durationpb.New(time.Second)
		}, false, []problem{{keypoolPath + ": connect_timeout", "1s is not below message_timeout 200ms"}}},
		{"no keepalive", false, func(t *testing.T, bs *bootstrapv3.Bootstrap, _ *config.Config) {
			editOptions(t, clusterNamed(t, bs, envoy.KeypoolCluster), func(o *httpv3.HttpProtocolOptions) {
				o.GetExplicitHttpConfig().GetHttp2ProtocolOptions().ConnectionKeepalive = nil
			})
		}, false, []problem{{keypoolPath + ": " + httpOpts + ".explicit_http_config.http2_protocol_options.connection_keepalive", "vanished without closing"}}},
		{"envoy-keypool behind TLS the cluster lacks", false, func(_ *testing.T, _ *bootstrapv3.Bootstrap, cfg *config.Config) {
			cfg.Envoy.KeypoolTLS = &config.KeypoolTLS{CAFile: "/etc/ca.pem", ServerName: "envoy-keypool"}
		}, false, []problem{{keypoolPath + ": transport_socket", "no TLS, but envoy.keypool_tls says"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs, cfg := loadCompose(t)
			if tt.example {
				bs, cfg = loadExample(t)
			}
			tt.mutate(t, bs, cfg)
			check := func() error { return envoy.CheckKeypool(bs, cfg) }
			if tt.load {
				check = func() error { return envoy.CheckLoad(bs) }
			}
			err := check()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("want no problem, got:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("the check passed")
			}
			got := envoy.Problems(err)
			for _, w := range tt.want {
				if !slices.ContainsFunc(got, func(p *envoy.Problem) bool { return p.Path == w.path && strings.Contains(p.Message, w.msg) }) {
					t.Errorf("no problem at %s containing %q; got:\n%v", w.path, w.msg, err)
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
