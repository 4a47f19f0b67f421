package standin

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	jsontometadatav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/json_to_metadata/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

type kv = jsontometadatav3.JsonToMetadata_KeyValuePair

func pair(key string, typ jsontometadatav3.JsonToMetadata_ValueType) *kv {
	return &kv{MetadataNamespace: "ns", Key: key, Type: typ}
}

func constant(key string, v *structpb.Value) *kv {
	return &kv{MetadataNamespace: "ns", Key: key, ValueType: &jsontometadatav3.JsonToMetadata_KeyValuePair_Value{Value: v}}
}

func jsonFilter(t *testing.T, rules ...*jsontometadatav3.JsonToMetadata_Rule) *jsonToMetadata {
	t.Helper()
	f, err := buildJSONToMetadata("test", &jsontometadatav3.JsonToMetadata{RequestRules: &jsontometadatav3.JsonToMetadata_MatchRules{Rules: rules}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func rule(keys string, onPresent, onMissing, onError *kv) *jsontometadatav3.JsonToMetadata_Rule {
	r := &jsontometadatav3.JsonToMetadata_Rule{OnPresent: onPresent, OnMissing: onMissing, OnError: onError}
	for _, k := range strings.Split(keys, ".") {
		r.Selectors = append(r.Selectors, &jsontometadatav3.JsonToMetadata_Selector{Selector: &jsontometadatav3.JsonToMetadata_Selector_Key{Key: k}})
	}
	return r
}

// What json_to_metadata writes for a body (Filter::processBody and handleOnPresent in
// extensions/filters/http/json_to_metadata/filter.cc, Envoy's JSON loader in
// common/json/json_internal.cc).
func TestJSONToMetadataRules(t *testing.T) {
	str, num, pv := jsontometadatav3.JsonToMetadata_STRING, jsontometadatav3.JsonToMetadata_NUMBER, jsontometadatav3.JsonToMetadata_PROTOBUF_VALUE
	missing, failed := constant("model", structpb.NewStringValue("missing")), constant("model", structpb.NewStringValue("error"))
	long := strings.Repeat("m", maxJSONMetadataValue+1)
	tests := []struct {
		name string
		rule *jsontometadatav3.JsonToMetadata_Rule
		body string
		want *structpb.Value // ns:model; nil = not written
	}{
		{"string", rule("model", pair("model", str), missing, failed), `{"model":"gpt-4o"}`, structpb.NewStringValue("gpt-4o")},
		{"nested selectors", rule("a.model", pair("model", str), missing, failed), `{"a":{"model":"m"}}`, structpb.NewStringValue("m")},
		{"intermediate not an object", rule("a.model", pair("model", str), missing, failed), `{"a":"x"}`, structpb.NewStringValue("missing")},
		{"missing key", rule("model", pair("model", str), missing, failed), `{"other":1}`, structpb.NewStringValue("missing")},
		{"missing key, no on_missing", rule("model", pair("model", str), nil, failed), `{"other":1}`, nil},
		{"no body", rule("model", pair("model", str), missing, failed), ``, structpb.NewStringValue("missing")},
		{"not JSON", rule("model", pair("model", str), missing, failed), `{"model":`, structpb.NewStringValue("error")},
		{"trailing garbage", rule("model", pair("model", str), missing, failed), `{"model":"x"} x`, structpb.NewStringValue("error")},
		{"whitespace only", rule("model", pair("model", str), missing, failed), "  ", structpb.NewStringValue("error")},
		{"invalid UTF-8", rule("model", pair("model", str), missing, failed), "{\"model\":\"\xff\"}", structpb.NewStringValue("error")},
		{"lone surrogate escape", rule("model", pair("model", str), missing, failed), `{"model":"\ud800"}`, structpb.NewStringValue("error")},
		{"surrogate pair escape", rule("model", pair("model", str), missing, failed), `{"model":"\ud83d\ude00"}`, structpb.NewStringValue("\U0001F600")},
		{"integer above int64", rule("model", pair("model", str), missing, failed), `{"model":"x","n":9223372036854775808}`, structpb.NewStringValue("error")},
		{"JSON string root", rule("model", pair("model", str), missing, failed), `"gpt"`, structpb.NewStringValue("missing")},
		{"array root", rule("model", pair("model", str), missing, failed), `[{"model":"x"}]`, structpb.NewStringValue("missing")},
		{"constant on_present needs no key", rule("model", constant("model", structpb.NewStringValue("seen")), missing, failed), `{"other":1}`, structpb.NewStringValue("seen")},
		{"object value is not a value", rule("model", pair("model", str), missing, failed), `{"model":{"a":1}}`, structpb.NewStringValue("missing")},
		{"null value", rule("model", pair("model", str), missing, failed), `{"model":null}`, structpb.NewStringValue("missing")},
		{"value over 8 KiB", rule("model", pair("model", str), missing, failed), `{"model":"` + long + `"}`, structpb.NewStringValue("missing")},
		{"PROTOBUF_VALUE over 8 KiB", rule("model", pair("model", pv), missing, failed), `{"model":"` + long + `"}`, structpb.NewStringValue("missing")},
		{"empty string writes nothing", rule("model", pair("model", str), missing, failed), `{"model":""}`, nil},
		{"STRING of true", rule("model", pair("model", str), missing, failed), `{"model":true}`, structpb.NewStringValue("1")},
		{"STRING of an integer", rule("model", pair("model", str), missing, failed), `{"model":7}`, structpb.NewStringValue("7")},
		{"STRING of a double", rule("model", pair("model", str), missing, failed), `{"model":1.5}`, structpb.NewStringValue("1.500000")},
		{"NUMBER of a string", rule("model", pair("model", num), missing, failed), `{"model":" 12.5 "}`, structpb.NewNumberValue(12.5)},
		{"NUMBER of a word", rule("model", pair("model", num), missing, failed), `{"model":"abc"}`, structpb.NewStringValue("missing")},
		{"NUMBER of a hex string", rule("model", pair("model", num), missing, failed), `{"model":"0x10"}`, structpb.NewStringValue("missing")},
		{"PROTOBUF_VALUE bool", rule("model", pair("model", pv), missing, failed), `{"model":false}`, structpb.NewBoolValue(false)},
		{"PROTOBUF_VALUE integer", rule("model", pair("model", pv), missing, failed), `{"model":3}`, structpb.NewNumberValue(3)},
		{"duplicate keys: the last wins", rule("model", pair("model", str), missing, failed), `{"model":"a","model":"b"}`, structpb.NewStringValue("b")},
		{"input ends at a NUL", rule("model", pair("model", str), missing, failed), "{\"model\":\"a\"}\x00trailing", structpb.NewStringValue("a")},
		{"byte order mark", rule("model", pair("model", str), missing, failed), "\xef\xbb\xbf{\"model\":\"a\"}", structpb.NewStringValue("a")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := jsonFilter(t, tc.rule).processBody([]byte(tc.body), &dynamicMetadata{})
			got, ok := out["ns"].GetFields()["model"]
			if tc.want == nil {
				if ok {
					t.Fatalf("wrote %v, want nothing", got)
				}
				return
			}
			if !ok || got.String() != tc.want.String() {
				t.Fatalf("wrote %v, want %v", got, tc.want)
			}
		})
	}
}

// preserve_existing_metadata_value keeps a value already in the stream's metadata
// (Filter::addMetadata); the default namespace is the filter's name.
func TestJSONToMetadataNamespaceAndPreserve(t *testing.T) {
	p := &kv{Key: "model", Type: jsontometadatav3.JsonToMetadata_STRING}
	out := jsonFilter(t, rule("model", p, nil, nil)).processBody([]byte(`{"model":"m"}`), &dynamicMetadata{})
	if got := out[jsonToMetadataNamespace].GetFields()["model"].GetStringValue(); got != "m" {
		t.Fatalf("default namespace got %q", got)
	}
	existing := &dynamicMetadata{}
	existing.merge("ns", &structpb.Struct{Fields: map[string]*structpb.Value{"model": structpb.NewStringValue("old")}})
	keep := pair("model", jsontometadatav3.JsonToMetadata_STRING)
	keep.PreserveExistingMetadataValue = true
	if out := jsonFilter(t, rule("model", keep, nil, nil)).processBody([]byte(`{"model":"new"}`), existing); out["ns"] != nil {
		t.Fatalf("overwrote a preserved value: %v", out)
	}
}

// The allowed content type is the whole content-type value, exactly
// (FilterConfig::requestContentTypeAllowed): application/json by default, a charset
// parameter only through allow_content_types_regex, none only with
// allow_empty_content_type.
func TestJSONToMetadataContentTypes(t *testing.T) {
	base := func() *jsontometadatav3.JsonToMetadata_MatchRules {
		return &jsontometadatav3.JsonToMetadata_MatchRules{Rules: []*jsontometadatav3.JsonToMetadata_Rule{rule("model", pair("model", jsontometadatav3.JsonToMetadata_STRING), nil, nil)}}
	}
	regex := base()
	regex.AllowContentTypesRegex = &matcherv3.RegexMatcher{Regex: `^application/json(\s*;.*)?$`}
	empty := base()
	empty.AllowEmptyContentType = true
	tests := []struct {
		name  string
		rules *jsontometadatav3.JsonToMetadata_MatchRules
		ct    string
		want  bool
	}{
		{"default exact", base(), "application/json", true},
		{"default with charset", base(), "application/json; charset=utf-8", false},
		{"regex with charset", regex, "application/json; charset=utf-8", true},
		{"regex other type", regex, "text/plain", false},
		{"empty by default", base(), "", false},
		{"empty allowed", empty, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := buildJSONToMetadata("test", &jsontometadatav3.JsonToMetadata{RequestRules: tc.rules})
			if err != nil {
				t.Fatal(err)
			}
			if got := f.contentTypeAllowed(tc.ct); got != tc.want {
				t.Fatalf("allowed(%q) = %v, want %v", tc.ct, got, tc.want)
			}
		})
	}
}

// generatedJSONToMetadata is the downstream filter as the envoycfg generator writes it:
// json_to_metadata behind match_delegate, skipped unless content-length is a decimal
// of at most 8 digits starting 1–2 (the buffer limit).
const generatedJSONToMetadata = `- name: envoy.filters.http.json_to_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
              xds_matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      not_matcher:
                        single_predicate:
                          input: {name: content-length, typed_config: {"@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: content-length}}
                          value_match: {safe_regex: {google_re2: {}, regex: '^([0-9]{1,7}|[1-2][0-9]{7})$'}}
                    on_match: {action: {name: skip, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter}}}
              extension_config:
                name: envoy.filters.http.json_to_metadata
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata
                  request_rules:
                    rules:
                    - selectors: [{key: model}]
                      on_present: {metadata_namespace: envoy-keypool, key: model, type: STRING}
                    allow_content_types: [application/json]
                    allow_content_types_regex: {regex: '^application/json(\s*;.*)?$'}`

// modelRecorder answers like markOn(429) and records the model each request-headers
// message carried in metadata_context.
type modelRecorder struct {
	mu     sync.Mutex // protects models
	models []string
}

func (m *modelRecorder) answer(stream int, req *extprocv3.ProcessingRequest) answer {
	if req.GetRequestHeaders() != nil {
		v := req.GetMetadataContext().GetFilterMetadata()["envoy-keypool"].GetFields()["model"].GetStringValue()
		m.mu.Lock()
		m.models = append(m.models, v)
		m.mu.Unlock()
	}
	return markOn(429)(stream, req)
}

func (m *modelRecorder) seen() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.models...)
}

// The model in the JSON body reaches every attempt's upstream ext_proc through
// metadata_options.forwarding_namespaces (ext_proc.cc addDynamicMetadata; the upstream
// filter manager shares the downstream stream info), and the body itself still goes
// to the provider on every attempt. match_delegate skips the filter for a body without
// content-length or past the limit, and a route's FilterConfig{disabled} turns it off.
func TestJSONToMetadataToUpstreamExtProc(t *testing.T) {
	const body = `{"model":"gpt-4o-mini","messages":[]}`
	tests := []struct {
		name      string
		p         params
		chunked   bool
		ct        string
		path      string
		wantModel string
	}{
		{"model forwarded", nil, false, "application/json", "/v1/chat/completions", "gpt-4o-mini"},
		{"charset allowed by the regex", nil, false, "application/json; charset=utf-8", "/v1/chat/completions", "gpt-4o-mini"},
		{"other content type", nil, false, "text/plain", "/v1/chat/completions", ""},
		{"no content-length: skipped", nil, true, "application/json", "/v1/chat/completions", ""},
		{"disabled by the route", params{"ExtraRoute": `- match: {prefix: "/gemini/"}
                route: {cluster: openai, retry_policy: {retry_on: retriable-headers, num_retries: 3, retry_back_off: {base_interval: 0.001s}, retriable_headers: [{name: x-keypool-retry}]}}
                typed_per_filter_config: {envoy.filters.http.json_to_metadata: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}}`},
			false, "application/json", "/gemini/x", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := params{"DownstreamFilters": generatedJSONToMetadata, "ExtProcExtra": "metadata_options: {forwarding_namespaces: {untyped: [envoy-keypool]}}"}
			for k, v := range tc.p {
				p[k] = v
			}
			rec := &modelRecorder{}
			px, _, up := keypoolSetup(t, p, rec.answer, func(n int, w http.ResponseWriter, _ *http.Request) {
				if n == 0 {
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				_, _ = w.Write([]byte("ok"))
			})
			var rd io.Reader = strings.NewReader(body)
			if tc.chunked {
				rd = io.MultiReader(strings.NewReader(body)) // unknown length: chunked
			}
			req, err := http.NewRequest("POST", "http://"+px.Addr()+tc.path, rd)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", tc.ct)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			models := rec.seen()
			if len(models) != 2 || models[0] != tc.wantModel || models[1] != tc.wantModel {
				t.Errorf("ext_proc saw models %q on its two attempts, want %q", models, tc.wantModel)
			}
			for i, r := range up.recorded() {
				if r.body != body {
					t.Errorf("attempt %d: provider got body %q", i+1, r.body)
				}
			}
		})
	}
}

// Without the matcher in front, a body past the filter manager's buffer limit is a
// 413 (ActiveStreamDecoderFilter::requestDataTooLarge in filter_manager.cc).
func TestJSONToMetadataBodyPastBufferLimit(t *testing.T) {
	plain := `- name: envoy.filters.http.json_to_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata
              request_rules: {rules: [{selectors: [{key: model}], on_present: {metadata_namespace: envoy-keypool, key: model, type: STRING}}]}`
	px, ep, up := keypoolSetup(t, params{"DownstreamFilters": plain, "BufferLimit": "1024", "ListenerBufferLimit": "1024"}, nil, nil)
	st, _, body := do(t, px, "POST", "/v1/chat/completions", `{"model":"`+strings.Repeat("x", 2048)+`"}`, map[string]string{"Content-Type": "application/json"})
	if st != 413 || body != "Payload Too Large" {
		t.Fatalf("got %d %q, want 413", st, body)
	}
	if len(up.recorded()) != 0 || len(ep.recorded()) != 0 {
		t.Fatal("the request went on past the filter")
	}
}

// A route header from %DYNAMIC_METADATA(ns:key)% is added by the router on the shared
// request headers before the first attempt, so upstream filters see it; an absent
// value omits the header (HeaderParser formats with omit_empty_values).
func TestDynamicMetadataRouteHeader(t *testing.T) {
	p := params{
		"DownstreamFilters": generatedJSONToMetadata,
		"RouteExtra":        `request_headers_to_add: [{header: {key: x-keypool-model, value: "%DYNAMIC_METADATA(envoy-keypool:model)%"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]`,
	}
	for body, want := range map[string]string{`{"model":"claude"}`: "claude", `{"other":1}`: ""} {
		px, ep, up := keypoolSetup(t, p, nil, nil)
		if st, _, _ := do(t, px, "POST", "/v1/messages", body, map[string]string{"Content-Type": "application/json"}); st != 200 {
			t.Fatalf("status %d", st)
		}
		got, present := headerOf(ep.recorded()[0].requests[0], "x-keypool-model")
		if got != want || present != (want != "") {
			t.Errorf("body %s: ext_proc saw x-keypool-model %q (present %v), want %q", body, got, present, want)
		}
		if got := up.recorded()[0].header.Get("X-Keypool-Model"); got != want {
			t.Errorf("body %s: upstream x-keypool-model %q", body, got)
		}
	}
}

// request_attributes [request.time]: sent once, with each stream's request-headers
// message, as absl::FormatTime prints a CEL timestamp (Filter::addAttributes); the
// same request start on every attempt.
func TestRequestTimeAttribute(t *testing.T) {
	px, ep, _ := keypoolSetup(t, params{"ExtProcExtra": "request_attributes: [request.time]"}, markOn(429), func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 0 {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	if st, _, _ := do(t, px, "POST", "/v1/chat/completions", "{}", nil); st != 200 {
		t.Fatalf("status %d", st)
	}
	streams := ep.recorded()
	if len(streams) != 2 {
		t.Fatalf("%d streams", len(streams))
	}
	var times []string
	for _, s := range streams {
		a := s.requests[0].GetAttributes()[extProcFilterName].GetFields()["request.time"].GetStringValue()
		if !strings.HasSuffix(a, "+00:00") || !strings.Contains(a, "T") {
			t.Errorf("request.time %q, want RFC 3339 in UTC", a)
		}
		if s.requests[1].GetAttributes() != nil {
			t.Errorf("attributes sent again with the response headers")
		}
		times = append(times, a)
	}
	if times[0] != times[1] {
		t.Errorf("request.time differs between attempts: %v", times)
	}
}
