package standin

import (
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// dynamicMetadata is a stream's dynamic metadata (StreamInfo::dynamicMetadata): the
// downstream filters write namespaces into it and every attempt's upstream filters
// read the same one, because the upstream filter manager shares the downstream stream
// info (UpstreamFilterManager in source/common/router/upstream_request.cc). The zero
// value is empty and ready to use.
type dynamicMetadata struct {
	mu sync.Mutex // protects md
	md map[string]*structpb.Struct
}

// merge is StreamInfo::setDynamicMetadata: the fields of s are merged into the
// namespace, a field already there replaced.
func (d *dynamicMetadata) merge(namespace string, s *structpb.Struct) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.md == nil {
		d.md = map[string]*structpb.Struct{}
	}
	cur, ok := d.md[namespace]
	if !ok {
		cur = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		d.md[namespace] = cur
	}
	for k, v := range s.GetFields() {
		cur.Fields[k] = proto.Clone(v).(*structpb.Value)
	}
}

// get returns one field, for %DYNAMIC_METADATA(ns:key)% and tests.
func (d *dynamicMetadata) get(namespace, key string) (*structpb.Value, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.md[namespace].GetFields()[key]
	return v, ok
}

// has reports whether key is set in namespace (preserve_existing_metadata_value).
func (d *dynamicMetadata) has(namespace, key string) bool {
	_, ok := d.get(namespace, key)
	return ok
}

// forward is the metadata_context of an ext_proc message (Filter::addDynamicMetadata
// in ext_proc.cc): the namespaces named by metadata_options.forwarding_namespaces
// that the stream has, copied; never nil, as Envoy always sets the field.
func (d *dynamicMetadata) forward(untyped, typed []string) *corev3.Metadata {
	out := &corev3.Metadata{}
	if d == nil || len(untyped) == 0 {
		return out
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ns := range untyped {
		if s, ok := d.md[ns]; ok {
			if out.FilterMetadata == nil {
				out.FilterMetadata = map[string]*structpb.Struct{}
			}
			out.FilterMetadata[ns] = proto.Clone(s).(*structpb.Struct)
		}
	}
	// No filter the stand-in runs writes typed metadata, so typed namespaces never match.
	_ = typed
	return out
}
