package deploy

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"text/template"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	yamlv3 "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/envoy-keypool/envoy-keypool/envoy"
)

// The Envoy fragments of the mesh and gateway examples are not written by hand: they
// are the generator's output for the examples' pool, put into templates that hold
// the Istio and Envoy Gateway resources and their comments. A change to the
// generator then reaches the examples with
//
//	cd deploy && go test -run TestExamplesAreGenerated -update .
var generatedExamples = []struct{ template, file string }{
	{"testdata/examples/istio/envoyfilter.yaml.tmpl", "examples/istio/envoyfilter.yaml"},
	{"testdata/examples/envoy-gateway/envoypatchpolicy.yaml.tmpl", "examples/envoy-gateway/envoypatchpolicy.yaml"},
	{"testdata/examples/ai-gateway/envoypatchpolicy.yaml.tmpl", "examples/ai-gateway/envoypatchpolicy.yaml"},
}

// exampleFragments are what the templates take from the generated configuration.
type exampleFragments struct {
	// KeypoolCluster is the envoy_keypool cluster.
	KeypoolCluster proto.Message
	// ProviderOptions is the pool's provider cluster's HttpProtocolOptions (an Any):
	// the upstream filters, the retry policy and the connection settings.
	ProviderOptions proto.Message
	// ProviderOptionFields are ProviderOptions' fields one by one, but the protocol
	// choice, for a gateway whose own protocol choice stays.
	ProviderOptionFields []optionField
	// From the route table: the virtual host's include_request_attempt_count, the
	// route's request_body_buffer_limit, the headers removed from responses and from
	// requests.
	IncludeAttemptCount     bool
	BufferLimit             uint64
	ResponseHeadersToRemove []string
	RequestHeadersToRemove  []string
}

type optionField struct {
	Name  string
	Value *yamlv3.Node
}

// upstreamProtocolFields choose the protocol to the provider; a gateway keeps its own.
var upstreamProtocolFields = map[string]bool{"explicit_http_config": true, "auto_config": true, "use_downstream_protocol_config": true}

func generatedFragments(t *testing.T) exampleFragments {
	t.Helper()
	cfg := examplePool(t)
	bs, err := envoy.Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var f exampleFragments
	f.KeypoolCluster = clusterNamed(t, bs, envoy.KeypoolCluster)
	provider := clusterNamed(t, bs, cfg.Pools[0].Name)
	f.ProviderOptions = provider.GetTypedExtensionProtocolOptions()[keyHTTPOptions]
	node := messageNode(t, f.ProviderOptions)
	for i := 0; i+1 < len(node.Content); i += 2 {
		if k := node.Content[i].Value; k != "@type" && !upstreamProtocolFields[k] {
			f.ProviderOptionFields = append(f.ProviderOptionFields, optionField{Name: k, Value: node.Content[i+1]})
		}
	}
	hcm := generatedHCM(t, bs)
	rc := hcm.GetRouteConfig()
	f.ResponseHeadersToRemove = rc.GetResponseHeadersToRemove()
	f.RequestHeadersToRemove = rc.GetRequestHeadersToRemove()
	for _, vh := range rc.GetVirtualHosts() {
		f.IncludeAttemptCount = vh.GetIncludeRequestAttemptCount()
		for _, r := range vh.GetRoutes() {
			if r.GetRoute().GetCluster() == cfg.Pools[0].Name {
				f.BufferLimit = r.GetRequestBodyBufferLimit().GetValue()
			}
		}
	}
	if f.BufferLimit == 0 || len(f.ResponseHeadersToRemove) == 0 {
		t.Fatal("the generated route table has no request_body_buffer_limit or response_headers_to_remove for the pool")
	}
	return f
}

func generatedHCM(t *testing.T, bs *bootstrapv3.Bootstrap) *hcmv3.HttpConnectionManager {
	t.Helper()
	for _, l := range bs.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, fl := range fc.GetFilters() {
				hcm := &hcmv3.HttpConnectionManager{}
				if fl.GetTypedConfig().UnmarshalTo(hcm) == nil {
					return hcm
				}
			}
		}
	}
	t.Fatal("the generated configuration has no HTTP connection manager")
	return nil
}

// messageNode is m as YAML the way Envoy reads it: protojson field names, in block
// style, with the zero values a reader must see written back (ext_proc's
// failure_mode_allow: false and its body modes NONE; protojson drops them).
func messageNode(t *testing.T, m proto.Message) *yamlv3.Node {
	t.Helper()
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(js, &doc); err != nil {
		t.Fatal(err)
	}
	n := doc.Content[0]
	blockStyleNode(n)
	writeBackExtProcDefaults(n)
	return n
}

func blockStyleNode(n *yamlv3.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyleNode(c)
	}
}

func writeBackExtProcDefaults(n *yamlv3.Node) {
	if n.Kind == yamlv3.MappingNode && nodeValue(n, "@type") == "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor" {
		setNodeDefault(n, "failure_mode_allow", "!!bool", "false", "message_timeout")
		for _, pm := range append([]*yamlv3.Node{mappingNode(n, "processing_mode")}, sequenceItems(mappingNode(n, "allowed_override_modes"))...) {
			if pm != nil {
				setNodeDefault(pm, "request_body_mode", "!!str", "NONE", "response_header_mode")
				setNodeDefault(pm, "response_body_mode", "!!str", "NONE", "request_body_mode")
			}
		}
	}
	for _, c := range n.Content {
		writeBackExtProcDefaults(c)
	}
}

func mappingNode(m *yamlv3.Node, key string) *yamlv3.Node {
	if m == nil || m.Kind != yamlv3.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func nodeValue(m *yamlv3.Node, key string) string {
	if v := mappingNode(m, key); v != nil {
		return v.Value
	}
	return ""
}

func sequenceItems(n *yamlv3.Node) []*yamlv3.Node {
	if n == nil || n.Kind != yamlv3.SequenceNode {
		return nil
	}
	return n.Content
}

// setNodeDefault adds key: value to mapping m right after the key after (at the end
// when after is absent), unless m has key.
func setNodeDefault(m *yamlv3.Node, key, tag, value, after string) {
	if mappingNode(m, key) != nil {
		return
	}
	at := len(m.Content)
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == after {
			at = i + 2
		}
	}
	kv := []*yamlv3.Node{{Kind: yamlv3.ScalarNode, Value: key}, {Kind: yamlv3.ScalarNode, Tag: tag, Value: value}}
	m.Content = append(m.Content[:at], append(kv, m.Content[at:]...)...)
}

// yamlAt renders a message or a YAML node as block YAML indented by n spaces.
func yamlAt(t *testing.T) func(v any, n int) (string, error) {
	return func(v any, n int) (string, error) {
		var node *yamlv3.Node
		switch v := v.(type) {
		case proto.Message:
			node = messageNode(t, v)
		case *yamlv3.Node:
			node = v
		default:
			return "", fmt.Errorf("yaml: cannot render %T", v)
		}
		var b bytes.Buffer
		enc := yamlv3.NewEncoder(&b)
		enc.SetIndent(2)
		if err := enc.Encode(node); err != nil {
			return "", err
		}
		pad := strings.Repeat(" ", n)
		lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
		for i := range lines {
			lines[i] = pad + lines[i]
		}
		return strings.Join(lines, "\n"), nil
	}
}

func TestExamplesAreGenerated(t *testing.T) {
	frags := generatedFragments(t)
	for _, ex := range generatedExamples {
		t.Run(ex.file, func(t *testing.T) {
			tmpl, err := template.New(ex.template).Funcs(template.FuncMap{"yaml": yamlAt(t)}).Parse(readFile(t, ex.template))
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			if err := tmpl.Execute(&b, frags); err != nil {
				t.Fatal(err)
			}
			if *update {
				if err := os.WriteFile(ex.file, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := readFile(t, ex.file); got != b.String() {
				t.Errorf("%s is not what %s renders from the generated configuration; run go test -run %s -update .", ex.file, ex.template, "TestExamplesAreGenerated")
			}
		})
	}
}
