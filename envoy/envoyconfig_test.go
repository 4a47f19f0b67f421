package envoy_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

// configDump renders bs as Envoy's admin /config_dump would for an Envoy of version
// major.minor that got its listeners, clusters and routes from a control plane: the
// route table goes to RDS, every resource into the dumps of its kind.
func configDump(t *testing.T, bs *bootstrapv3.Bootstrap, minor uint32) []byte {
	t.Helper()
	bs = proto.Clone(bs).(*bootstrapv3.Bootstrap)
	var listeners []*adminv3.ListenersConfigDump_DynamicListener
	var routes []*adminv3.RoutesConfigDump_DynamicRouteConfig
	for _, l := range bs.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				h := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(h) != nil {
					continue
				}
				if rc := h.GetRouteConfig(); rc != nil {
					routes = append(routes, &adminv3.RoutesConfigDump_DynamicRouteConfig{VersionInfo: "1", RouteConfig: mustAnyT(t, rc)})
					h.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
						RouteConfigName: rc.GetName(),
						ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
					}}
				}
				f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAnyT(t, h)}
			}
		}
		listeners = append(listeners, &adminv3.ListenersConfigDump_DynamicListener{
			Name:        l.GetName(),
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: "1", Listener: mustAnyT(t, l)},
		})
	}
	var clusters []*adminv3.ClustersConfigDump_DynamicCluster
	for _, c := range bs.GetStaticResources().GetClusters() {
		clusters = append(clusters, &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: "1", Cluster: mustAnyT(t, c)})
	}
	boot := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: "envoy-1", UserAgentName: "envoy", UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{
			UserAgentBuildVersion: &corev3.BuildVersion{Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: minor, Patch: 2}},
		}},
		Admin: bs.GetAdmin(),
	}
	dump := &adminv3.ConfigDump{Configs: []*anypb.Any{
		mustAnyT(t, &adminv3.BootstrapConfigDump{Bootstrap: boot}),
		mustAnyT(t, &adminv3.ClustersConfigDump{VersionInfo: "1", DynamicActiveClusters: clusters}),
		mustAnyT(t, &adminv3.ListenersConfigDump{VersionInfo: "1", DynamicListeners: listeners}),
		mustAnyT(t, &adminv3.RoutesConfigDump{DynamicRouteConfigs: routes}),
	}}
	out, err := protojson.MarshalOptions{UseProtoNames: true, Indent: "  "}.Marshal(dump)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustAnyT(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// check-envoy reads a bootstrap as YAML or JSON and an Envoy 1.37 /config_dump (RDS
// routes included) into the same configuration: the shipped one passes every check in
// each form.
func TestEnvoyConfigFormsOfTheShippedConfig(t *testing.T) {
	bs, cfg := loadCompose(t)
	yamlData, err := os.ReadFile(filepath.Join(repoRoot, composeEnvoy))
	if err != nil {
		t.Fatal(err)
	}
	jsonData, err := protojson.Marshal(bs)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		data    []byte
		version string
	}{
		{"bootstrap YAML", yamlData, ""},
		{"bootstrap JSON", jsonData, ""},
		{"config dump", configDump(t, bs, 37), "1.37.2"},
		{"config dump of a newer Envoy", configDump(t, bs, 38), "1.38.2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ec, err := envoy.ParseEnvoyConfig(tt.data)
			if err != nil {
				t.Fatal(err)
			}
			if ec.Version != tt.version {
				t.Errorf("version %q, want %q", ec.Version, tt.version)
			}
			if got, want := len(ec.Bootstrap.GetStaticResources().GetClusters()), len(cfg.Pools)+1; got != want {
				t.Errorf("%d clusters, want %d", got, want)
			}
			if err := errors.Join(ec.CheckLoad(), ec.CheckKeypool(cfg)); err != nil {
				t.Errorf("problems in the shipped configuration:\n%v", err)
			}
		})
	}
}

// In a config dump the route table is a resource of its own; a problem in it is named
// by that resource.
func TestConfigDumpProblemsNameTheRouteConfiguration(t *testing.T) {
	bs, cfg := loadCompose(t)
	editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) { openAIRoute(h).RequestBodyBufferLimit = nil })
	ec, err := envoy.ParseEnvoyConfig(configDump(t, bs, 37))
	if err != nil {
		t.Fatal(err)
	}
	want := `route_configuration "llm": virtual_hosts[0].routes[2].request_body_buffer_limit`
	got := envoy.Problems(ec.CheckKeypool(cfg))
	if !slices.ContainsFunc(got, func(p *envoy.Problem) bool { return p.Path == want }) {
		t.Errorf("no problem at %s; got %v", want, got)
	}
}

// A bootstrap whose routes come from RDS cannot be checked from the file alone; the
// problem says to check the config dump.
func TestBootstrapWithRDSPointsToTheConfigDump(t *testing.T) {
	bs, cfg := loadCompose(t)
	editHCM(t, bs, func(h *hcmv3.HttpConnectionManager) {
		h.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "llm"}}
	})
	err := envoy.CheckKeypool(bs, cfg)
	if err == nil || !strings.Contains(err.Error(), "check Envoy's /config_dump instead") {
		t.Errorf("want a pointer to /config_dump, got %v", err)
	}
}

// Mesh and gateway configurations carry extensions this build does not link (Istio's
// stats filter, a Wasm module): check-envoy keeps them opaque and checks the rest,
// while ParseBootstrap, for the project's own files, still refuses an unknown type.
func TestUnknownExtensionsStayOpaque(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(repoRoot, composeEnvoy))
	if err != nil {
		t.Fatal(err)
	}
	unknown := strings.Replace(string(good), "                http_filters:\n", `                http_filters:
                  - name: istio.stats
                    typed_config:
                      '@type': type.googleapis.com/stats.PluginConfig
                      disable_host_header_fallback: true
`, 1)
	if unknown == string(good) {
		t.Fatal("the edit changed nothing")
	}
	if _, err := envoy.ParseBootstrap([]byte(unknown)); err == nil {
		t.Error("ParseBootstrap accepted an unknown type")
	}
	ec, err := envoy.ParseEnvoyConfig([]byte(unknown))
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(ec.CheckLoad(), ec.CheckKeypool(loadKeypoolConfig(t, "envoy/compose/keypool.yaml"))); err != nil {
		t.Errorf("an unrelated opaque filter made problems:\n%v", err)
	}
}

// Input that is no Envoy configuration check-envoy can read is refused with an error
// that says why, never a panic or a list of nonsense problems.
func TestParseEnvoyConfigRefusesBadInput(t *testing.T) {
	bs, _ := loadCompose(t)
	dump := string(configDump(t, bs, 37))
	tests := []struct {
		name, data string
		is         error
		want       string
	}{
		{"empty", "  \n", envoy.ErrNotEnvoyConfig, "empty"},
		{"YAML list", "- a\n- b\n", envoy.ErrNotEnvoyConfig, "a list, not an object"},
		{"scalar", "hello", envoy.ErrNotEnvoyConfig, "a string, not an object"},
		{"envoy-keypool config", "pools: []\nenvoy: {listen: ':1'}\n", envoy.ErrNotEnvoyConfig, `unknown field "envoy"`},
		{"empty object", "{}", envoy.ErrNotEnvoyConfig, "neither static_resources nor dynamic_resources"},
		{"truncated JSON", dump[:len(dump)/2], envoy.ErrNotEnvoyConfig, "parse JSON"},
		{"two JSON documents", `{"admin":{}} {"admin":{}}`, envoy.ErrNotEnvoyConfig, "more than one value"},
		{"binary", "\x00\x01\x02\xff", envoy.ErrNotEnvoyConfig, "parse YAML"},
		{"YAML with a tab indent", "static_resources:\n\tclusters: []\n", envoy.ErrNotEnvoyConfig, "parse YAML"},
		{"config dump of Envoy 1.36", string(configDump(t, bs, 36)), envoy.ErrEnvoyVersion, "Envoy 1.36.2; envoy-keypool needs Envoy 1.37 or later"},
		{"config dump with an unknown field", strings.Replace(dump, `"configs"`, `"configs_v4": [], "configs"`, 1), envoy.ErrNotEnvoyConfig, `unknown field "configs_v4"`},
		{"config dump of nothing", `{"configs": []}`, envoy.ErrNotEnvoyConfig, "holds no bootstrap"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := envoy.ParseEnvoyConfig([]byte(tt.data))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q: want %v containing %q", err, tt.is, tt.want)
			}
		})
	}
}

// Whatever the bytes, reading them as an Envoy configuration and checking it never
// panics; what reads is checked without a panic either.
func FuzzParseEnvoyConfig(f *testing.F) {
	for _, p := range []string{composeEnvoy, "envoy/envoy.yaml"} {
		data, err := os.ReadFile(filepath.Join(repoRoot, p))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": [{"route_config": {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "x"}}]}]}`))
	f.Add([]byte(`{"static_resources": {"listeners": [{"name": "l", "filter_chains": [{"filters": [{"name": "h", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "rds": {"route_config_name": "x"}}}]}]}]}}`))
	f.Add([]byte(`{"static_resources": {"clusters": [{"name": "c", "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {"@type": "type.googleapis.com/foo.Bar"}}}]}}`))
	f.Add([]byte("static_resources: {clusters: [{name: a, type: EDS}]}"))
	cfg, err := config.ReadWithoutSecrets(strings.NewReader("pools:\n  - {name: openai, provider: openai, keys: [{id: a, secret: 'env:A'}]}\n"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ec, err := envoy.ParseEnvoyConfig(data)
		if err != nil {
			if !errors.Is(err, envoy.ErrNotEnvoyConfig) && !errors.Is(err, envoy.ErrEnvoyVersion) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		_ = ec.Validate()
		_ = ec.CheckLoad()
		_ = ec.CheckKeypool(cfg)
	})
}
