package envoy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	// The typed configs the shipped bootstraps name, and a few a hand-written one
	// commonly adds. protojson resolves an Any only when its type is linked in, so a
	// typo in a type URL fails to load.
	_ "github.com/cncf/xds/go/xds/type/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/matcher/action/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/upstream_codec/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// LoadBootstrap reads an Envoy bootstrap YAML file, resolves every typed config in it
// and runs the protos' validation rules on every message, nested ones included.
func LoadBootstrap(path string) (*bootstrapv3.Bootstrap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read envoy bootstrap: %w", err)
	}
	bs, err := ParseBootstrap(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return bs, nil
}

// ParseBootstrap is LoadBootstrap for YAML (or JSON) already in memory.
func ParseBootstrap(yamlData []byte) (*bootstrapv3.Bootstrap, error) {
	var tree any
	if err := yaml.Unmarshal(yamlData, &tree); err != nil {
		return nil, fmt.Errorf("parse yaml: %w", err)
	}
	jsonData, err := json.Marshal(tree)
	if err != nil {
		return nil, fmt.Errorf("convert yaml to json: %w", err)
	}
	bs := &bootstrapv3.Bootstrap{}
	// DiscardUnknown stays false: an unknown field is an error, as in Envoy.
	if err := protojson.Unmarshal(jsonData, bs); err != nil {
		return nil, fmt.Errorf("decode bootstrap: %w", err)
	}
	if err := ValidateDeep(bs); err != nil {
		return nil, err
	}
	return bs, nil
}

// validator is implemented by every message that protoc-gen-validate generated code for.
type validator interface {
	ValidateAll() error
}

// ValidateDeep runs the generated validation of m and of every message nested in it,
// unpacking each google.protobuf.Any: the generated ValidateAll stops at an Any, while
// Envoy validates the typed config inside it when it loads the bootstrap.
func ValidateDeep(m proto.Message) error {
	var errs []error
	walkMessages(m.ProtoReflect(), func(msg protoreflect.Message) {
		if v, ok := msg.Interface().(validator); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", msg.Descriptor().FullName(), err))
			}
		}
	}, &errs)
	return errors.Join(errs...)
}

func walkMessages(msg protoreflect.Message, visit func(protoreflect.Message), errs *[]error) {
	if a, ok := msg.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			*errs = append(*errs, fmt.Errorf("typed config %q: %w", a.GetTypeUrl(), err))
			return
		}
		walkMessages(inner.ProtoReflect(), visit, errs)
		return
	}
	visit(msg)
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walkMessages(mv.Message(), visit, errs)
					return true
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				list := v.List()
				for i := range list.Len() {
					walkMessages(list.Get(i).Message(), visit, errs)
				}
			}
		case fd.Message() != nil:
			walkMessages(v.Message(), visit, errs)
		}
		return true
	})
}
