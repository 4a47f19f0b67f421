package standin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// headerFormat is a route header value with substitution commands, the part of
// Envoy's substitution formatter (source/common/formatter) the stand-in runs:
// literal text, "%%" for a percent sign, and %DYNAMIC_METADATA(NAMESPACE:KEY[:KEY…])[:Z]%.
// Route headers are formatted with omit_empty_values (HeaderParser,
// source/common/router/header_parser.cc), so an absent value is empty, and a header
// whose whole value is empty is not added unless keep_empty_value.
type headerFormat struct {
	parts []formatPart
}

type formatPart struct {
	literal   string
	namespace string   // set for a DYNAMIC_METADATA command
	path      []string // keys below the namespace; empty = the whole namespace
	maxLen    int      // :Z truncation, 0 = none
}

// parseHeaderFormat parses v; it returns nil for a value without commands.
func parseHeaderFormat(v string) (*headerFormat, error) {
	if !strings.Contains(v, "%") {
		return nil, nil
	}
	f := &headerFormat{}
	for len(v) > 0 {
		i := strings.IndexByte(v, '%')
		if i < 0 {
			f.parts = append(f.parts, formatPart{literal: v})
			break
		}
		if i > 0 {
			f.parts = append(f.parts, formatPart{literal: v[:i]})
		}
		v = v[i+1:]
		if strings.HasPrefix(v, "%") {
			f.parts = append(f.parts, formatPart{literal: "%"})
			v = v[1:]
			continue
		}
		j := strings.IndexByte(v, '%')
		if j < 0 {
			return nil, fmt.Errorf("unterminated substitution command in %q", v)
		}
		cmd := v[:j]
		v = v[j+1:]
		const prefix = "DYNAMIC_METADATA("
		if !strings.HasPrefix(cmd, prefix) {
			return nil, fmt.Errorf("%w: substitution formatters (%%...%%) other than DYNAMIC_METADATA in header values: %%%s%%", ErrUnsupported, cmd)
		}
		end := strings.IndexByte(cmd, ')')
		if end < 0 {
			return nil, fmt.Errorf("DYNAMIC_METADATA without a closing parenthesis")
		}
		args := strings.Split(cmd[len(prefix):end], ":")
		p := formatPart{namespace: args[0], path: args[1:]}
		if p.namespace == "" {
			return nil, fmt.Errorf("DYNAMIC_METADATA needs a namespace")
		}
		if rest := cmd[end+1:]; rest != "" {
			n, err := strconv.Atoi(strings.TrimPrefix(rest, ":"))
			if !strings.HasPrefix(rest, ":") || err != nil || n <= 0 {
				return nil, fmt.Errorf("bad DYNAMIC_METADATA length %q", rest)
			}
			p.maxLen = n
		}
		f.parts = append(f.parts, p)
	}
	return f, nil
}

// format renders the value for one stream.
func (f *headerFormat) format(md *dynamicMetadata) string {
	var b strings.Builder
	for _, p := range f.parts {
		if p.namespace == "" {
			b.WriteString(p.literal)
			continue
		}
		b.WriteString(p.render(md))
	}
	return b.String()
}

// render is MetadataFormatter::formatMetadata: a string as it is, another value as
// JSON, nothing for an absent or null value, truncated to :Z.
func (p formatPart) render(md *dynamicMetadata) string {
	if md == nil {
		return ""
	}
	md.mu.Lock()
	ns, ok := md.md[p.namespace]
	var v *structpb.Value
	if ok {
		v = structpb.NewStructValue(ns)
		for _, k := range p.path {
			next, ok := v.GetStructValue().GetFields()[k]
			if !ok {
				v = nil
				break
			}
			v = next
		}
	}
	var out string
	switch {
	case v == nil:
	case v.GetKind() == nil:
	default:
		if _, null := v.GetKind().(*structpb.Value_NullValue); null {
			break
		}
		if s, isStr := v.GetKind().(*structpb.Value_StringValue); isStr {
			out = s.StringValue
			break
		}
		if n, isNum := v.GetKind().(*structpb.Value_NumberValue); isNum {
			out = strconv.FormatFloat(n.NumberValue, 'g', -1, 64)
			break
		}
		if j, err := protojson.Marshal(v); err == nil {
			var compact bytes.Buffer
			if json.Compact(&compact, j) == nil {
				out = compact.String()
			}
		}
	}
	md.mu.Unlock()
	if p.maxLen > 0 && len(out) > p.maxLen {
		out = out[:p.maxLen]
	}
	return out
}
