package standin

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func mapOf(kv ...string) *headerMap {
	h := &headerMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.add(kv[i], kv[i+1])
	}
	return h
}

// Point 3: how set_headers combine with existing values. Envoy's ext_proc reads only
// the deprecated `append` (default false = overwrite) and ignores append_action
// (mutation_utils.cc; envoy issue #36982); Options.HonourAppendAction switches to the
// append_action semantics of route-level headers_to_add.
func TestSetHeadersAppendSemantics(t *testing.T) {
	opt := func(action corev3.HeaderValueOption_HeaderAppendAction, appendField *bool) *corev3.HeaderValueOption {
		o := &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-k", RawValue: []byte("new")}, AppendAction: action}
		if appendField != nil {
			o.Append = wrapperspb.Bool(*appendField)
		}
		return o
	}
	yes, no := true, false
	tests := []struct {
		name          string
		opt           *corev3.HeaderValueOption
		existing      bool
		honourActions bool
		want          []string
	}{
		{"envoy: append unset overwrites", opt(corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD, nil), true, false, []string{"new"}},
		{"envoy: append true appends", opt(corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, &yes), true, false, []string{"old", "new"}},
		{"envoy: append false overwrites", opt(corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD, &no), true, false, []string{"new"}},
		{"envoy: ADD_IF_ABSENT ignored, overwrites", opt(corev3.HeaderValueOption_ADD_IF_ABSENT, nil), true, false, []string{"new"}},
		{"envoy: OVERWRITE_IF_EXISTS ignored, adds", opt(corev3.HeaderValueOption_OVERWRITE_IF_EXISTS, nil), false, false, []string{"new"}},
		{"envoy: OVERWRITE_IF_EXISTS_OR_ADD adds", opt(corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, nil), false, false, []string{"new"}},
		{"actions: OVERWRITE_IF_EXISTS_OR_ADD", opt(corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, nil), true, true, []string{"new"}},
		{"actions: APPEND_IF_EXISTS_OR_ADD", opt(corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD, nil), true, true, []string{"old", "new"}},
		{"actions: ADD_IF_ABSENT present", opt(corev3.HeaderValueOption_ADD_IF_ABSENT, nil), true, true, []string{"old"}},
		{"actions: ADD_IF_ABSENT absent", opt(corev3.HeaderValueOption_ADD_IF_ABSENT, nil), false, true, []string{"new"}},
		{"actions: OVERWRITE_IF_EXISTS present", opt(corev3.HeaderValueOption_OVERWRITE_IF_EXISTS, nil), true, true, []string{"new"}},
		{"actions: OVERWRITE_IF_EXISTS absent", opt(corev3.HeaderValueOption_OVERWRITE_IF_EXISTS, nil), false, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &headerMap{}
			if tc.existing {
				h.add("x-k", "old")
			}
			c, _ := newMutationChecker(nil)
			if _, err := applyHeaderMutation(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{tc.opt}}, h, false, c, tc.honourActions); err != nil {
				t.Fatal(err)
			}
			if got := h.values("x-k"); strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("x-k = %v, want %v", got, tc.want)
			}
		})
	}
}

// Point 4: the default HeaderMutationRules (mutation_rules.cc): x-envoy-* only with
// allow_envoy; host, :authority, :scheme, :method only with allow_all_routing; ":"
// headers and host never removed; a disallowed change is ignored, or an error with
// disallow_is_error.
func TestMutationChecker(t *testing.T) {
	b := wrapperspb.Bool
	tests := []struct {
		name  string
		rules *mutationrulesv3.HeaderMutationRules
		op    checkOp
		hdr   string
		value string
		want  checkResult
	}{
		{"authorization set", nil, opSet, "authorization", "Bearer k", checkOK},
		{"x-api-key removed", nil, opRemove, "x-api-key", "", checkOK},
		{"x-goog-api-key set", nil, opSet, "x-goog-api-key", "k", checkOK},
		{"path set", nil, opSet, ":path", "/v2", checkOK},
		{"x-envoy ignored", nil, opSet, "x-envoy-retry-on", "5xx", checkIgnore},
		{"x-envoy with allow_envoy", &mutationrulesv3.HeaderMutationRules{AllowEnvoy: b(true)}, opSet, "x-envoy-retry-on", "5xx", checkOK},
		{"host ignored", nil, opSet, "host", "evil.example", checkIgnore},
		{":authority ignored", nil, opSet, ":authority", "evil.example", checkIgnore},
		{":scheme ignored", nil, opSet, ":scheme", "https", checkIgnore},
		{":method ignored", nil, opSet, ":method", "DELETE", checkIgnore},
		{":authority with allow_all_routing", &mutationrulesv3.HeaderMutationRules{AllowAllRouting: b(true)}, opSet, ":authority", "a.example", checkOK},
		{":scheme bad value even when allowed", &mutationrulesv3.HeaderMutationRules{AllowAllRouting: b(true)}, opSet, ":scheme", "ftp", checkIgnore},
		{":path never removed", nil, opRemove, ":path", "", checkIgnore},
		{"host never removed with allow_all_routing", &mutationrulesv3.HeaderMutationRules{AllowAllRouting: b(true)}, opRemove, "host", "", checkIgnore},
		{":path append refused", nil, opAppend, ":path", "/x", checkIgnore},
		{"disallow_is_error", &mutationrulesv3.HeaderMutationRules{DisallowIsError: b(true)}, opSet, "x-envoy-foo", "1", checkFail},
		{"disallow_system", &mutationrulesv3.HeaderMutationRules{DisallowSystem: b(true)}, opSet, ":path", "/x", checkIgnore},
		{"disallow_all", &mutationrulesv3.HeaderMutationRules{DisallowAll: b(true)}, opSet, "authorization", "x", checkIgnore},
		{":status below 200", nil, opSet, ":status", "100", checkIgnore},
		{"value with newline", nil, opSet, "x-a", "a\nb", checkIgnore},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := newMutationChecker(tc.rules)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.check(tc.op, tc.hdr, tc.value); got != tc.want {
				t.Fatalf("check(%v, %q) = %v, want %v", tc.op, tc.hdr, got, tc.want)
			}
		})
	}
}

// Point 4, as a client sees it: what the upstream receives after the ext_proc server
// tries forbidden changes, and the 500 that disallow_is_error turns them into.
func TestMutationRulesEndToEnd(t *testing.T) {
	forbidden := &extprocv3.HeaderMutation{
		SetHeaders: []*corev3.HeaderValueOption{
			setHeader("authorization", "Bearer pool-key"),
			setHeader("x-envoy-upstream-alt-stat-name", "evil"),
			setHeader(":authority", "evil.example"),
			setHeader("host", "evil.example"),
			setHeader(":method", "DELETE"),
			setHeader(":scheme", "https"),
		},
		RemoveHeaders: []string{":path", "host"},
	}
	answer := func(_ int, req *extprocv3.ProcessingRequest) answer {
		if req.GetRequestHeaders() != nil {
			return answer{resp: headersResponse(req, forbidden)}
		}
		return answer{}
	}
	t.Run("default rules ignore", func(t *testing.T) {
		px, _, up := keypoolSetup(t, nil, answer, nil)
		status, _, _ := do(t, px, "POST", "/v1/x", "{}", map[string]string{"host": "api.example.com"})
		if status != 200 {
			t.Fatalf("status %d, want 200", status)
		}
		r := up.recorded()[0]
		if r.method != "POST" || r.host != "api.example.com" || r.path != "/v1/x" {
			t.Errorf("routing headers changed: %s %s %s", r.method, r.host, r.path)
		}
		if r.header.Get("Authorization") != "Bearer pool-key" {
			t.Errorf("authorization = %q, want the pool key", r.header.Get("Authorization"))
		}
		if r.header.Get("X-Envoy-Upstream-Alt-Stat-Name") != "" {
			t.Errorf("x-envoy header set without allow_envoy")
		}
		if got := px.Stats().RejectedMutations; got != 7 {
			t.Errorf("rejected mutations = %d, want 7", got)
		}
	})
	t.Run("disallow_is_error", func(t *testing.T) {
		px, _, up := keypoolSetup(t, params{"MutationRules": "{disallow_is_error: true}"}, answer, nil)
		status, _, _ := do(t, px, "POST", "/v1/x", "{}", nil)
		if status != 500 {
			t.Fatalf("status %d, want 500 (status_on_error)", status)
		}
		if n := len(up.recorded()); n != 0 {
			t.Fatalf("upstream reached %d times, want 0", n)
		}
	})
	t.Run("allow_envoy", func(t *testing.T) {
		px, _, up := keypoolSetup(t, params{"MutationRules": "{allow_envoy: true}"}, answer, nil)
		if status, _, _ := do(t, px, "POST", "/v1/x", "{}", nil); status != 200 {
			t.Fatalf("status %d", status)
		}
		if got := up.recorded()[0].header.Get("X-Envoy-Upstream-Alt-Stat-Name"); got != "evil" {
			t.Errorf("x-envoy header = %q with allow_envoy", got)
		}
	})
}

// Invalid mutations fail the whole message (mutation_utils.cc) whatever the rules.
func TestInvalidMutationIsError(t *testing.T) {
	c, _ := newMutationChecker(nil)
	tests := []struct {
		name string
		m    *extprocv3.HeaderMutation
	}{
		{"bad name", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("bad name", "v")}}},
		{"bad value", &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("x", "a\r\nb")}}},
		{"bad remove", &extprocv3.HeaderMutation{RemoveHeaders: []string{"a b"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := applyHeaderMutation(tc.m, mapOf("x", "1"), false, c, false)
			if !errors.Is(err, errMutation) {
				t.Fatalf("err = %v, want errMutation", err)
			}
		})
	}
}

// Only raw_value is read (mutation_utils.cc applyHeaderMutations reads
// sh.header().raw_value()): with both fields set raw_value wins; `value` alone sets
// the header empty.
func TestMutationReadsRawValue(t *testing.T) {
	c, _ := newMutationChecker(nil)
	tests := []struct {
		name  string
		value string
		raw   string
		want  string
	}{
		{"raw_value only", "", "b", "b"},
		{"value and raw_value", "a", "b", "b"},
		{"value only", "a", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := mapOf()
			m := &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x", Value: tc.value, RawValue: []byte(tc.raw)}}}}
			if _, err := applyHeaderMutation(m, h, false, c, false); err != nil {
				t.Fatal(err)
			}
			if v, ok := h.get("x"); !ok || v != tc.want {
				t.Fatalf("x = %q (present %v), want %q", v, ok, tc.want)
			}
		})
	}
}

// A mutation that leaves more than 100 headers or 60 KiB fails the message
// (MutationUtils::headerMutationResultCheck), as does one that removes or sets more
// than 100 headers (responseHeaderSizeCheck).
func TestMutationHeaderLimits(t *testing.T) {
	c, _ := newMutationChecker(nil)
	many := func(n, size int) *extprocv3.HeaderMutation {
		m := &extprocv3.HeaderMutation{}
		for i := range n {
			m.SetHeaders = append(m.SetHeaders, setHeader(fmt.Sprintf("x-h%d", i), strings.Repeat("v", size)))
		}
		return m
	}
	tests := []struct {
		name    string
		start   int // headers already present
		m       *extprocv3.HeaderMutation
		wantErr bool
	}{
		{"100 sets on an empty map", 0, many(100, 1), false},
		{"101 sets", 0, many(101, 1), true},
		{"101 removes", 0, &extprocv3.HeaderMutation{RemoveHeaders: strings.Split(strings.Repeat("a,", 101)[:201], ",")}, true},
		{"101 headers after the mutation", 60, many(41, 1), true},
		{"100 headers after the mutation", 60, many(40, 1), false},
		{"over 60 KiB after the mutation", 0, many(2, 31*1024), true},
		{"under 60 KiB after the mutation", 0, many(2, 29*1024), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := mapOf()
			for i := range tc.start {
				h.add(fmt.Sprintf("x-old%d", i), "v")
			}
			_, err := applyHeaderMutation(tc.m, h, false, c, false)
			if gotErr := errors.Is(err, errMutation); gotErr != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
		})
	}
	// Through the filter, the refused message is status_on_error (500).
	px, _, up := keypoolSetup(t, nil, func(_ int, req *extprocv3.ProcessingRequest) answer {
		if req.GetRequestHeaders() != nil {
			return answer{resp: headersResponse(req, many(2, 31*1024))}
		}
		return answer{}
	}, nil)
	if st, _, _ := do(t, px, "POST", "/v1/chat/completions", "{}", nil); st != 500 {
		t.Fatalf("status %d, want 500", st)
	}
	if n := len(up.recorded()); n != 0 {
		t.Fatalf("upstream reached %d times", n)
	}
}

// An upstream ext_proc may set :path under the default mutation rules (only host,
// :authority, :method, :scheme and x-envoy-* are blocked, and a ':' header can be
// neither appended to nor removed: mutation_rules.cc Checker::isAllowed). The router
// hands the shared header map to upstream_codec after the upstream filters
// (upstream_codec_filter.cc decodeHeaders), so the rewritten path goes upstream, and as
// it is rewritten in place every retry carries it too.
func TestUpstreamExtProcRewritesPath(t *testing.T) {
	appendTo := func(k, v string) *corev3.HeaderValueOption {
		o := setHeader(k, v)
		o.Append = wrapperspb.Bool(true)
		return o
	}
	var seenPaths []string
	var mu sync.Mutex
	answer := func(_ int, req *extprocv3.ProcessingRequest) answer {
		if req.GetRequestHeaders() == nil {
			if st, _ := headerOf(req, ":status"); st == "429" {
				return answer{resp: headersResponse(req, &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("x-keypool-retry", "1")}})}
			}
			return answer{}
		}
		p, _ := headerOf(req, ":path")
		mu.Lock()
		seenPaths = append(seenPaths, p)
		mu.Unlock()
		clean := strings.Split(p, "?")[0]
		return answer{resp: headersResponse(req, &extprocv3.HeaderMutation{
			SetHeaders:    []*corev3.HeaderValueOption{setHeader(":path", clean), appendTo(":path", "/x"), appendTo(":authority", "evil")},
			RemoveHeaders: []string{":method"},
		})}
	}
	px, _, up := keypoolSetup(t, nil, answer, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 0 {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	if st, _, _ := do(t, px, "POST", "/v1/models/gemini:generateContent?key=client-key", "{}", nil); st != 200 {
		t.Fatalf("status %d", st)
	}
	reqs := up.recorded()
	if len(reqs) != 2 {
		t.Fatalf("%d attempts, want 2", len(reqs))
	}
	for i, r := range reqs {
		if r.path != "/v1/models/gemini:generateContent" || r.method != "POST" {
			t.Errorf("attempt %d: %s %s, want POST with the rewritten path", i+1, r.method, r.path)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seenPaths) != 2 || seenPaths[1] != "/v1/models/gemini:generateContent" {
		t.Errorf("ext_proc saw paths %v; the retry must carry the rewritten path", seenPaths)
	}
	if n := px.Stats().RejectedMutations; n != 6 {
		t.Errorf("rejected mutations %d, want 6 (append to :path and :authority, remove :method, on both attempts)", n)
	}
}
