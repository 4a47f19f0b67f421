package standin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	jsontometadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// jsonToMetadataNamespace is the namespace of a rule without metadata_namespace
// (Filter::decideNamespace: HttpFilterNames JsonToMetadata).
const jsonToMetadataNamespace = "envoy.filters.http.json_to_metadata"

// maxJSONMetadataValue is MAX_PAYLOAD_VALUE_LEN of json_to_metadata/filter.h: a string
// value longer than 8 KiB is an error for that rule.
const maxJSONMetadataValue = 8 * 1024

// jsonToMetadata is the request side of envoy.filters.http.json_to_metadata
// (source/extensions/filters/http/json_to_metadata/filter.cc), the one the stand-in
// runs: it reads the whole request body as JSON and writes the values its rules select
// into the stream's dynamic metadata, then lets the body on unchanged.
type jsonToMetadata struct {
	rules             []jsonRule
	allowContentTypes []string // exact matches; application/json when none is configured
	allowEmpty        bool
	allowRegex        *regexp.Regexp
}

type jsonRule struct {
	keys      []string
	onPresent *jsontometadatav3.JsonToMetadata_KeyValuePair
	onMissing *jsontometadatav3.JsonToMetadata_KeyValuePair
	onError   *jsontometadatav3.JsonToMetadata_KeyValuePair
}

func buildJSONToMetadata(where string, m *jsontometadatav3.JsonToMetadata) (*jsonToMetadata, error) {
	if err := onlyFields(where, m, "request_rules"); err != nil {
		return nil, err
	}
	rr := m.GetRequestRules()
	if err := onlyFields(where+" request_rules", rr, "rules", "allow_content_types", "allow_empty_content_type", "allow_content_types_regex"); err != nil {
		return nil, err
	}
	f := &jsonToMetadata{allowContentTypes: rr.GetAllowContentTypes(), allowEmpty: rr.GetAllowEmptyContentType()}
	if len(f.allowContentTypes) == 0 {
		f.allowContentTypes = []string{"application/json"}
	}
	if re := rr.GetAllowContentTypesRegex(); re != nil {
		var err error
		if f.allowRegex, err = compileFullRegex(re.GetRegex()); err != nil {
			return nil, fmt.Errorf("%s request_rules.allow_content_types_regex: %w", where, err)
		}
	}
	for i, r := range rr.GetRules() {
		w := fmt.Sprintf("%s request_rules.rules[%d]", where, i)
		// Rule::Rule: on_present or on_missing is required; on_missing and on_error
		// need a value.
		if r.GetOnPresent() == nil && r.GetOnMissing() == nil {
			return nil, fmt.Errorf("%s: neither on_present nor on_missing set", w)
		}
		if r.GetOnMissing() != nil && r.GetOnMissing().GetValue() == nil {
			return nil, fmt.Errorf("%s: on_missing without a value", w)
		}
		if r.GetOnError() != nil && r.GetOnError().GetValue() == nil {
			return nil, fmt.Errorf("%s: on_error without a value", w)
		}
		rule := jsonRule{onPresent: r.GetOnPresent(), onMissing: r.GetOnMissing(), onError: r.GetOnError()}
		for _, s := range r.GetSelectors() {
			rule.keys = append(rule.keys, s.GetKey())
		}
		if len(rule.keys) == 0 {
			return nil, fmt.Errorf("%s: no selectors", w)
		}
		f.rules = append(f.rules, rule)
	}
	if len(f.rules) == 0 {
		return nil, fmt.Errorf("%s: %w: no request_rules (response rules are not run)", where, ErrUnsupported)
	}
	return f, nil
}

// contentTypeAllowed is FilterConfig::requestContentTypeAllowed: the whole
// content-type value, exactly one of allow_content_types or matching
// allow_content_types_regex; none at all only with allow_empty_content_type.
func (f *jsonToMetadata) contentTypeAllowed(ct string) bool {
	if ct == "" {
		return f.allowEmpty
	}
	return slices.Contains(f.allowContentTypes, ct) || (f.allowRegex != nil && f.allowRegex.MatchString(ct))
}

// structMap is the per-namespace metadata one run produces.
type structMap map[string]*structpb.Struct

func (m structMap) add(kv *jsontometadatav3.JsonToMetadata_KeyValuePair, v *structpb.Value, existing *dynamicMetadata) {
	ns := kv.GetMetadataNamespace()
	if ns == "" {
		ns = jsonToMetadataNamespace
	}
	if kv.GetPreserveExistingMetadataValue() && existing.has(ns, kv.GetKey()) {
		return
	}
	s, ok := m[ns]
	if !ok {
		s = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		m[ns] = s
	}
	s.Fields[kv.GetKey()] = v
}

func (f *jsonToMetadata) allOnMissing(existing *dynamicMetadata) structMap {
	out := structMap{}
	for _, r := range f.rules {
		if r.onMissing != nil {
			out.add(r.onMissing, proto.Clone(r.onMissing.GetValue()).(*structpb.Value), existing)
		}
	}
	return out
}

func (f *jsonToMetadata) allOnError(existing *dynamicMetadata) structMap {
	out := structMap{}
	for _, r := range f.rules {
		if r.onError != nil {
			out.add(r.onError, proto.Clone(r.onError.GetValue()).(*structpb.Value), existing)
		}
	}
	return out
}

// mismatchedContentType is decodeHeaders with a content type the rules do not allow:
// every rule's on_error, and the body is not read.
func (f *jsonToMetadata) mismatchedContentType(existing *dynamicMetadata) structMap {
	return f.allOnError(existing)
}

// processBody is Filter::processBody: no body → on_missing for every rule; a body that
// is not JSON → on_error for every rule; JSON that is not an object → on_missing for
// every rule; else each rule walks its selectors (a missing or non-object step is
// on_missing), and its on_present writes the value, converted to the pair's type (a
// failed conversion or a value over 8 KiB is on_missing for that rule; an empty string
// writes nothing).
func (f *jsonToMetadata) processBody(body []byte, existing *dynamicMetadata) structMap {
	if len(body) == 0 {
		return f.allOnMissing(existing)
	}
	root, err := parseEnvoyJSON(body)
	if err != nil {
		return f.allOnError(existing)
	}
	if root == nil {
		return f.allOnMissing(existing)
	}
	out := structMap{}
	for _, r := range f.rules {
		node := root
		missing := false
		for _, k := range r.keys[:len(r.keys)-1] {
			obj, ok := node.object[k]
			if !ok || obj.object == nil {
				missing = true
				break
			}
			node = obj
		}
		if missing {
			if r.onMissing != nil {
				out.add(r.onMissing, proto.Clone(r.onMissing.GetValue()).(*structpb.Value), existing)
			}
			continue
		}
		if err := r.applyOnPresent(node, r.keys[len(r.keys)-1], out, existing); err != nil && r.onMissing != nil {
			out.add(r.onMissing, proto.Clone(r.onMissing.GetValue()).(*structpb.Value), existing)
		}
	}
	return out
}

// applyOnPresent is Filter::handleOnPresent. Note Envoy's order: an on_present with a
// constant value is written without looking the key up at all.
func (r *jsonRule) applyOnPresent(parent *jsonNode, key string, out structMap, existing *dynamicMetadata) error {
	kv := r.onPresent
	if kv == nil {
		return nil
	}
	if kv.GetValue() != nil {
		out.add(kv, proto.Clone(kv.GetValue()).(*structpb.Value), existing)
		return nil
	}
	n, ok := parent.object[key]
	if !ok || !n.isScalar() {
		return errors.New("key missing or not a value")
	}
	switch kv.GetType() {
	case jsontometadatav3.JsonToMetadata_NUMBER:
		d, err := n.toNumber()
		if err != nil {
			return err
		}
		out.add(kv, structpb.NewNumberValue(d), existing)
	case jsontometadatav3.JsonToMetadata_STRING:
		s := n.toEnvoyString()
		if len(s) > maxJSONMetadataValue {
			return errors.New("metadata value is too long")
		}
		if s == "" {
			return nil // an empty string adds nothing, and is not on_missing
		}
		out.add(kv, structpb.NewStringValue(s), existing)
	default: // PROTOBUF_VALUE
		switch {
		case n.str != nil:
			if len(*n.str) > maxJSONMetadataValue {
				return errors.New("metadata value is too long")
			}
			out.add(kv, structpb.NewStringValue(*n.str), existing)
		case n.boolean != nil:
			out.add(kv, structpb.NewBoolValue(*n.boolean), existing)
		case n.integer != nil:
			out.add(kv, structpb.NewNumberValue(float64(*n.integer)), existing)
		default:
			out.add(kv, structpb.NewNumberValue(*n.double), existing)
		}
	}
	return nil
}

// jsonNode is a value of Envoy's JSON loader (source/common/json/json_internal.cc):
// objects, arrays (kept only as "not an object"), null, booleans, int64 integers,
// doubles and strings.
type jsonNode struct {
	object  map[string]*jsonNode // non-nil for an object
	array   bool
	null    bool
	boolean *bool
	integer *int64
	double  *float64
	str     *string
}

func (n *jsonNode) isScalar() bool {
	return n.boolean != nil || n.integer != nil || n.double != nil || n.str != nil
}

// toNumber is JsonValueToDoubleConverter: numbers and booleans as they are, a string
// through absl::SimpleAtod after trimming whitespace.
func (n *jsonNode) toNumber() (float64, error) {
	switch {
	case n.boolean != nil:
		if *n.boolean {
			return 1, nil
		}
		return 0, nil
	case n.integer != nil:
		return float64(*n.integer), nil
	case n.double != nil:
		return *n.double, nil
	}
	s := strings.Trim(*n.str, " \t\f\v\n\r")
	// absl::SimpleAtod reads decimal (and inf/nan) forms only; Go's ParseFloat would
	// also take hexadecimal floats and underscores.
	if t := strings.TrimLeft(s, "+-"); strings.HasPrefix(t, "0x") || strings.HasPrefix(t, "0X") || strings.Contains(s, "_") {
		return 0, fmt.Errorf("value %s to number conversion failed", s)
	}
	d, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("value %s to number conversion failed", s)
	}
	return d, nil
}

// toEnvoyString is JsonValueToStringConverter: std::to_string for booleans ("1", "0"),
// integers and doubles ("%f", six decimals), strings as they are.
func (n *jsonNode) toEnvoyString() string {
	switch {
	case n.boolean != nil:
		if *n.boolean {
			return "1"
		}
		return "0"
	case n.integer != nil:
		return strconv.FormatInt(*n.integer, 10)
	case n.double != nil:
		return strconv.FormatFloat(*n.double, 'f', 6, 64)
	}
	return *n.str
}

var errJSON = errors.New("JSON supplied is not valid")

// parseEnvoyJSON parses a body the way Factory::loadFromString does: the input ends at
// the first NUL byte (it is read as a C string), a UTF-8 byte order mark is skipped,
// strings must be valid UTF-8, an integer above int64 is an error, and only an object
// or array root is kept (a scalar root gives nil, "valid but not an object"). Among
// duplicate keys the last wins.
func parseEnvoyJSON(body []byte) (*jsonNode, error) {
	if i := bytes.IndexByte(body, 0); i >= 0 {
		body = body[:i]
	}
	body = bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(body) || hasLoneSurrogate(body) {
		return nil, errJSON
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	root, err := decodeJSONValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errJSON // trailing content
	}
	if root.object == nil && !root.array {
		return nil, nil
	}
	return root, nil
}

// hasLoneSurrogate reports a \u escape of a UTF-16 surrogate that is not part of a
// high-low pair, which nlohmann's lexer rejects and encoding/json turns into U+FFFD.
// Backslashes only occur inside strings in valid JSON, so no string state is kept.
func hasLoneSurrogate(b []byte) bool {
	hex4 := func(i int) (int, bool) {
		if i+4 > len(b) {
			return 0, false
		}
		n, err := strconv.ParseUint(string(b[i:i+4]), 16, 32)
		return int(n), err == nil
	}
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 >= len(b) {
			continue
		}
		if b[i+1] != 'u' {
			i++ // skip the escaped character
			continue
		}
		u, ok := hex4(i + 2)
		if !ok {
			return false // a syntax error encoding/json reports itself
		}
		switch {
		case u >= 0xDC00 && u <= 0xDFFF:
			return true
		case u >= 0xD800 && u <= 0xDBFF:
			if i+7 >= len(b) || b[i+6] != '\\' || b[i+7] != 'u' {
				return true
			}
			low, ok := hex4(i + 8)
			if !ok || low < 0xDC00 || low > 0xDFFF {
				return true
			}
			i += 11
		default:
			i += 5
		}
	}
	return false
}

func decodeJSONValue(dec *json.Decoder) (*jsonNode, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, errJSON
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			n := &jsonNode{object: map[string]*jsonNode{}}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, errJSON
				}
				k, ok := kt.(string)
				if !ok {
					return nil, errJSON
				}
				v, err := decodeJSONValue(dec)
				if err != nil {
					return nil, err
				}
				n.object[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, errJSON
			}
			return n, nil
		case '[':
			for dec.More() {
				if _, err := decodeJSONValue(dec); err != nil {
					return nil, err
				}
			}
			if _, err := dec.Token(); err != nil {
				return nil, errJSON
			}
			return &jsonNode{array: true}, nil
		}
		return nil, errJSON
	case bool:
		return &jsonNode{boolean: &t}, nil
	case string:
		return &jsonNode{str: &t}, nil
	case nil:
		return &jsonNode{null: true}, nil
	case json.Number:
		return numberNode(string(t))
	}
	return nil, errJSON
}

// numberNode follows nlohmann's number events as Envoy's SAX handler takes them: an
// integer literal within int64 is an integer, one within uint64 but above int64 is an
// error ("larger than int64_t"), a larger one or any fraction or exponent a double.
func numberNode(s string) (*jsonNode, error) {
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return &jsonNode{integer: &i}, nil
		}
		if _, err := strconv.ParseUint(s, 10, 64); err == nil {
			return nil, errJSON
		}
	}
	d, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, errJSON
	}
	return &jsonNode{double: &d}, nil
}
