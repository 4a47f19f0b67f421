package standin

import (
	"fmt"
	"slices"
	"sort"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// onlyFields returns an error naming every populated field of m that is not in
// allowed. The stand-in uses it on each configuration message it reads so that a field
// it does not implement fails the load instead of being silently ignored: a config
// that passes here behaves in the stand-in as the fields it names say.
func onlyFields(where string, m proto.Message, allowed ...string) error {
	if m == nil {
		return nil
	}
	r := m.ProtoReflect()
	if !r.IsValid() {
		return nil
	}
	var extra []string
	r.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(allowed, string(fd.Name())) {
			extra = append(extra, string(fd.Name()))
		}
		return true
	})
	if len(extra) == 0 {
		return nil
	}
	sort.Strings(extra)
	return fmt.Errorf("%s: %w: %v", where, ErrUnsupported, extra)
}

// hasField reports whether the field named name is populated in m (proto3 presence).
func hasField(m proto.Message, name string) bool {
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName(protoreflect.Name(name))
	return fd != nil && r.Has(fd)
}
