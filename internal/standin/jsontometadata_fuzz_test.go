package standin

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"

	jsontometadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// FuzzJSONToMetadataBody feeds arbitrary request bodies to json_to_metadata's body
// handling, with the rule the generated config uses plus on_missing/on_error markers:
// it must never panic; it writes exactly one of on_missing, on_error or a selected
// string of at most 8 KiB; a body encoding/json rejects (after Envoy's NUL cut and BOM
// skip) is on_error; and a value it writes is the body's "model" string.
func FuzzJSONToMetadataBody(f *testing.F) {
	for _, s := range []string{
		`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":""}`, `{"model":7}`, `{"model":true}`, `{"model":1.5e3}`, `{"model":null}`,
		`{"model":{"nested":1}}`, `[{"model":"x"}]`, `"model"`, `42`, ``, `   `, `{`, `{"model":"a"} trailing`,
		"{\"model\":\"\xff\"}", "\xef\xbb\xbf{\"model\":\"bom\"}", "{\"model\":\"a\"}\x00{", `{"model":"a","model":"b"}`,
		`{"n":9223372036854775808,"model":"x"}`, `{"n":-9223372036854775809,"model":"x"}`, `{"model":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	filter, err := buildJSONToMetadata("fuzz", &jsontometadatav3.JsonToMetadata{RequestRules: &jsontometadatav3.JsonToMetadata_MatchRules{Rules: []*jsontometadatav3.JsonToMetadata_Rule{
		rule("model", pair("model", jsontometadatav3.JsonToMetadata_STRING),
			constant("model", structpb.NewStringValue("\x00missing")), constant("model", structpb.NewStringValue("\x00error"))),
	}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		out := filter.processBody(body, &dynamicMetadata{})
		v, ok := out["ns"].GetFields()["model"]
		input := body
		if i := bytes.IndexByte(input, 0); i >= 0 {
			input = input[:i]
		}
		input = bytes.TrimPrefix(input, []byte("\xef\xbb\xbf"))
		if len(body) > 0 && (!json.Valid(input) || !utf8.Valid(input)) {
			if !ok || v.GetStringValue() != "\x00error" {
				t.Fatalf("body %q rejected by encoding/json: wrote %v, want on_error", body, v)
			}
			return
		}
		if !ok {
			return // an empty "model" string writes nothing
		}
		s := v.GetStringValue()
		switch s {
		case "\x00missing", "\x00error":
			return
		}
		if len(s) > maxJSONMetadataValue {
			t.Fatalf("wrote %d bytes, over the 8 KiB limit", len(s))
		}
		var doc map[string]any
		if err := json.Unmarshal(input, &doc); err != nil {
			t.Fatalf("wrote %q for a body that is not an object: %v", s, err)
		}
		if m, isStr := doc["model"].(string); isStr && m != s {
			t.Fatalf("wrote %q, body's model is %q", s, m)
		}
	})
}
