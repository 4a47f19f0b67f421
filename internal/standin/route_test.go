package standin

import (
	"net/http"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"encoding/json"
)

func mustRoute(t *testing.T, y string) *routev3.Route {
	t.Helper()
	var tree any
	if err := yaml.Unmarshal([]byte(y), &tree); err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	r := &routev3.Route{}
	if err := protojson.Unmarshal(j, r); err != nil {
		t.Fatal(err)
	}
	return r
}

// The cluster's upstream filter chain wins over the router's upstream_http_filters;
// the router's applies to clusters without one. The pool is named by each filter's
// initial_metadata. prefix_rewrite changes the path the upstream and ext_proc see.
func TestClusterFiltersWinOverRouter(t *testing.T) {
	openai, anthropic := startUpstream(t, nil), startUpstream(t, nil)
	ep := startFakeExtProc(t, nil)
	px := startProxy(t, "router_filters.yaml", nil, map[string][]string{"openai": {openai.addr()}, "anthropic": {anthropic.addr()}, "keypool": {ep.addr}})
	for _, path := range []string{"/openai/chat", "/anthropic/messages"} {
		if st, _, _ := do(t, px, "POST", path, "{}", nil); st != 200 {
			t.Fatalf("%s: status %d", path, st)
		}
	}
	s := ep.recorded()
	if len(s) != 2 {
		t.Fatalf("%d streams, want 2", len(s))
	}
	if got := s[0].md.Get("x-keypool-pool"); len(got) != 1 || got[0] != "router-default" {
		t.Errorf("openai (router chain) pool metadata %v", got)
	}
	if got := s[1].md.Get("x-keypool-pool"); len(got) != 1 || got[0] != "anthropic" {
		t.Errorf("anthropic (cluster chain) pool metadata %v", got)
	}
	if p, _ := headerOf(s[1].requests[0], ":path"); p != "/v1/messages" {
		t.Errorf("ext_proc saw :path %q, want the rewritten /v1/messages", p)
	}
	if got := anthropic.recorded()[0]; got.path != "/v1/messages" || got.header.Get("X-Envoy-Original-Path") != "/anthropic/messages" {
		t.Errorf("upstream got %s (original %q)", got.path, got.header.Get("X-Envoy-Original-Path"))
	}
	if st, _, _ := do(t, px, "GET", "/unknown", "", nil); st != http.StatusNotFound {
		t.Errorf("unrouted path: %d, want 404", st)
	}
}

func TestMatchVirtualHost(t *testing.T) {
	rc := &routeConfig{vhosts: []*virtualHost{
		{name: "any", domains: []string{"*"}},
		{name: "suffix", domains: []string{"*.example.com"}},
		{name: "prefix", domains: []string{"api.*"}},
		{name: "exact", domains: []string{"api.example.com"}},
	}}
	for host, want := range map[string]string{
		"api.example.com": "exact", "x.example.com": "suffix", "api.other.org": "prefix", "other.org": "any", "API.EXAMPLE.COM": "exact",
	} {
		if got := rc.matchVirtualHost(host); got.name != want {
			t.Errorf("%s -> %s, want %s", host, got.name, want)
		}
	}
}

// A route's FilterConfig{disabled} names a filter of any chain: the upstream filter
// manager builds its chain with the downstream route (FilterChainUtility::
// createFilterChainForFactories asks route->filterDisabled; the upstream filter
// manager shares the downstream stream info), so it turns the upstream ext_proc off.
func TestRouteDisablesUpstreamFilterByName(t *testing.T) {
	const disable = `typed_per_filter_config: {envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}}`
	for _, tc := range []struct {
		name       string
		routeExtra string
		wantStream int
	}{
		{"enabled", "", 1},
		{"disabled by the route", disable, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			px, ep, up := keypoolSetup(t, params{"RouteExtra": tc.routeExtra}, nil, nil)
			if st, _, _ := do(t, px, "GET", "/v1/models", "", nil); st != 200 {
				t.Fatalf("status %d", st)
			}
			if n := len(ep.recorded()); n != tc.wantStream {
				t.Fatalf("%d ext_proc streams, want %d", n, tc.wantStream)
			}
			if len(up.recorded()) != 1 {
				t.Fatal("the provider was not reached")
			}
		})
	}
}
