package envoy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
)

// ErrNotEnvoyConfig is wrapped by LoadEnvoyConfig's error when the input is neither
// an Envoy bootstrap nor an Envoy /config_dump: not YAML or JSON, truncated, of the
// wrong shape, or with fields Envoy's API does not have.
var ErrNotEnvoyConfig = errors.New("not an Envoy bootstrap or config dump")

// ErrEnvoyVersion is wrapped by LoadEnvoyConfig's error for a config dump of an Envoy
// older than envoy-keypool needs.
var ErrEnvoyVersion = errors.New("Envoy version not supported")

// MinEnvoyMinor is the oldest Envoy (1.MinEnvoyMinor) envoy-keypool supports: an
// upstream ext_proc filter answers with local replies since 1.36.0 and no longer
// breaks retries since 1.37.0, and the cluster retry policy is new in 1.37.0.
const MinEnvoyMinor = 37

const typeTypedStruct = "type.googleapis.com/xds.type.v3.TypedStruct"

// LoadEnvoyConfig reads an Envoy configuration the way check-envoy takes it: a
// bootstrap (YAML or JSON) or the JSON of Envoy's admin /config_dump. Typed configs of
// extensions this build does not know (a mesh's or gateway's own filters) are kept
// opaque instead of failing the load; the checks never need to look inside them.
func LoadEnvoyConfig(path string) (*EnvoyConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read envoy config: %w", err)
	}
	c, err := ParseEnvoyConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseEnvoyConfig is LoadEnvoyConfig for data in memory.
func ParseEnvoyConfig(data []byte) (*EnvoyConfig, error) {
	tree, err := decodeTree(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotEnvoyConfig, err)
	}
	top, ok := tree.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: the document is a %s, not an object", ErrNotEnvoyConfig, kindOf(tree))
	}
	opaqueUnknownTypes(top)
	js, err := json.Marshal(top)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotEnvoyConfig, err)
	}
	if _, isDump := top["configs"]; isDump {
		return parseConfigDump(js)
	}
	bs := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, bs); err != nil {
		return nil, fmt.Errorf("%w: decode bootstrap: %s", ErrNotEnvoyConfig, protoError(err))
	}
	if bs.GetStaticResources() == nil && bs.GetDynamicResources() == nil {
		return nil, fmt.Errorf("%w: neither static_resources nor dynamic_resources", ErrNotEnvoyConfig)
	}
	return &EnvoyConfig{Bootstrap: bs}, nil
}

// Validate runs the protos' validation rules on a bootstrap read from a file, as Envoy
// does when it loads one. A config dump comes from a running Envoy and is not
// validated again.
func (c *EnvoyConfig) Validate() error {
	if err := ValidateDeep(c.Bootstrap); err != nil {
		return &Problem{Path: "bootstrap", Message: "Envoy refuses it: " + err.Error()}
	}
	return nil
}

func parseConfigDump(js []byte) (*EnvoyConfig, error) {
	dump := &adminv3.ConfigDump{}
	if err := protojson.Unmarshal(js, dump); err != nil {
		return nil, fmt.Errorf("%w: decode config dump: %s (a dump of an Envoy newer than this envoy-keypool knows can have fields it lacks)", ErrNotEnvoyConfig, protoError(err))
	}
	c := &EnvoyConfig{Bootstrap: &bootstrapv3.Bootstrap{}, Routes: map[string]*routev3.RouteConfiguration{}}
	var listeners []*anypb.Any
	var clusters []*anypb.Any
	haveListeners, haveClusters := false, false
	for i, a := range dump.GetConfigs() {
		m, err := a.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("%w: configs[%d]: %v", ErrNotEnvoyConfig, i, err)
		}
		switch d := m.(type) {
		case *adminv3.BootstrapConfigDump:
			c.Bootstrap = d.GetBootstrap()
			if v := d.GetBootstrap().GetNode().GetUserAgentBuildVersion().GetVersion(); v != nil {
				c.Version = fmt.Sprintf("%d.%d.%d", v.GetMajorNumber(), v.GetMinorNumber(), v.GetPatch())
				if v.GetMajorNumber() < 1 || (v.GetMajorNumber() == 1 && v.GetMinorNumber() < MinEnvoyMinor) {
					return nil, fmt.Errorf("%w: the config dump comes from Envoy %s; envoy-keypool needs Envoy 1.%d or later (upstream ext_proc broke retries before 1.37.0)", ErrEnvoyVersion, c.Version, MinEnvoyMinor)
				}
			}
		case *adminv3.ListenersConfigDump:
			haveListeners = true
			for _, l := range d.GetStaticListeners() {
				listeners = append(listeners, l.GetListener())
			}
			for _, l := range d.GetDynamicListeners() {
				if s := l.GetActiveState(); s != nil {
					listeners = append(listeners, s.GetListener())
				}
			}
		case *adminv3.ClustersConfigDump:
			haveClusters = true
			for _, cl := range d.GetStaticClusters() {
				clusters = append(clusters, cl.GetCluster())
			}
			for _, cl := range d.GetDynamicActiveClusters() {
				clusters = append(clusters, cl.GetCluster())
			}
		case *adminv3.RoutesConfigDump:
			var all []*anypb.Any
			for _, r := range d.GetStaticRouteConfigs() {
				all = append(all, r.GetRouteConfig())
			}
			for _, r := range d.GetDynamicRouteConfigs() {
				all = append(all, r.GetRouteConfig())
			}
			for _, a := range all {
				rc := &routev3.RouteConfiguration{}
				if err := a.UnmarshalTo(rc); err != nil {
					return nil, fmt.Errorf("%w: route configuration: %v", ErrNotEnvoyConfig, err)
				}
				c.Routes[rc.GetName()] = rc
			}
		}
	}
	if !haveListeners && !haveClusters && len(c.Routes) == 0 && c.Bootstrap.GetStaticResources() == nil {
		return nil, fmt.Errorf("%w: the config dump holds no bootstrap, listeners, clusters or routes", ErrNotEnvoyConfig)
	}
	// The listener and cluster dumps hold the bootstrap's static resources too, and
	// every resource discovered since.
	sr := c.Bootstrap.GetStaticResources()
	if sr == nil {
		sr = &bootstrapv3.Bootstrap_StaticResources{}
		c.Bootstrap.StaticResources = sr
	}
	if haveListeners {
		sr.Listeners = nil
		for _, a := range listeners {
			l := &listenerv3.Listener{}
			if err := a.UnmarshalTo(l); err != nil {
				return nil, fmt.Errorf("%w: listener: %v", ErrNotEnvoyConfig, err)
			}
			sr.Listeners = append(sr.Listeners, l)
		}
	}
	if haveClusters {
		sr.Clusters = nil
		for _, a := range clusters {
			cl := &clusterv3.Cluster{}
			if err := a.UnmarshalTo(cl); err != nil {
				return nil, fmt.Errorf("%w: cluster: %v", ErrNotEnvoyConfig, err)
			}
			sr.Clusters = append(sr.Clusters, cl)
		}
	}
	return c, nil
}

// decodeTree reads YAML or JSON (JSON through encoding/json, for its exact errors and
// its numbers) into a generic tree.
func decodeTree(data []byte) (any, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("the file is empty")
	}
	var tree any
	if trimmed[0] == '{' || trimmed[0] == '[' {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.UseNumber()
		if err := dec.Decode(&tree); err != nil {
			return nil, fmt.Errorf("parse JSON: %w", err)
		}
		if dec.More() {
			return nil, errors.New("parse JSON: more than one value")
		}
		return tree, nil
	}
	if err := yaml.Unmarshal(trimmed, &tree); err != nil {
		return nil, fmt.Errorf("parse YAML: %w", err)
	}
	return tree, nil
}

// opaqueUnknownTypes replaces every typed config whose type this build does not know
// with a TypedStruct of the same type URL and fields (the form Envoy itself accepts
// for untyped configs), so that protojson can decode the rest.
func opaqueUnknownTypes(v any) {
	switch n := v.(type) {
	case map[string]any:
		if url, ok := n["@type"].(string); ok && url != typeTypedStruct {
			if _, err := protoregistry.GlobalTypes.FindMessageByURL(url); err != nil {
				value := map[string]any{}
				for k, v := range n {
					if k != "@type" {
						value[k] = v
					}
				}
				for k := range n {
					delete(n, k)
				}
				n["@type"] = typeTypedStruct
				n["type_url"] = url
				n["value"] = value
				return
			}
		}
		for _, c := range n {
			opaqueUnknownTypes(c)
		}
	case []any:
		for _, c := range n {
			opaqueUnknownTypes(c)
		}
	}
}

// protoPosition is protojson's position in the JSON it was given, which is the
// re-encoded document, not the user's file.
var protoPosition = regexp.MustCompile(`^proto:[\s\x{00a0}]*\(line \d+:\d+\):[\s\x{00a0}]*`)

func protoError(err error) string {
	return protoPosition.ReplaceAllString(err.Error(), "")
}

func kindOf(v any) string {
	switch v.(type) {
	case []any:
		return "list"
	case nil:
		return "null"
	case string:
		return "string"
	default:
		return strings.TrimPrefix(fmt.Sprintf("%T", v), "json.")
	}
}
