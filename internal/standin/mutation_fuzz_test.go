package standin

import (
	"strings"
	"testing"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// FuzzApplyHeaderMutation feeds arbitrary HeaderMutation and ImmediateResponse
// messages (wire bytes) to the mutation code: it must never panic, and under the
// default rules it must never change a routing header, an x-envoy-* header, or remove
// a ":" header or host.
func FuzzApplyHeaderMutation(f *testing.F) {
	seed := func(m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("authorization", "Bearer k")}, RemoveHeaders: []string{"x-api-key"}})
	seed(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader(":authority", "evil"), setHeader("x-envoy-x", "1"), setHeader(":method", "PUT")}, RemoveHeaders: []string{":path", "host"}})
	seed(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-a", Value: "v", RawValue: []byte("r")}, Append: wrapperspb.Bool(true)}}})
	seed(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("x", "a\r\nb"), setHeader("bad name", "v"), setHeader(":status", "99")}})
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00})

	p := &Proxy{opts: Options{}.withDefaults()}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &extprocv3.HeaderMutation{}
		if err := proto.Unmarshal(data, m); err != nil {
			return
		}
		c, _ := newMutationChecker(nil)
		before := mapOf(":method", "POST", ":path", "/v1/x", ":authority", "api.example.com", ":scheme", "https", "host", "api.example.com", "x-envoy-attempt-count", "1", "authorization", "Bearer old")
		for _, honour := range []bool{false, true} {
			h := before.clone()
			_, _ = applyHeaderMutation(m, h, false, c, honour)
			for _, k := range []string{":path", ":authority", ":scheme", ":method", "host", "x-envoy-attempt-count"} {
				if strings.Join(h.values(k), ",") != strings.Join(before.values(k), ",") && k != ":path" {
					t.Fatalf("default rules let %s change: %v -> %v", k, before.values(k), h.values(k))
				}
				if k == ":path" && len(h.values(k)) != 1 {
					t.Fatalf(":path has %d values after mutation", len(h.values(k)))
				}
			}
			for _, e := range h.entries {
				if strings.HasPrefix(e.key, "x-envoy") && e.key != "x-envoy-attempt-count" {
					t.Fatalf("x-envoy header %s added under default rules", e.key)
				}
				if !headerValueIsValid(e.value) && !strings.HasPrefix(e.key, ":") {
					t.Fatalf("invalid value stored for %s: %q", e.key, e.value)
				}
			}
		}
		// The same bytes as an ImmediateResponse's headers, under rules that allow more.
		ir := &extprocv3.ImmediateResponse{Headers: m, Body: data}
		loose, _ := newMutationChecker(&mutationrulesv3.HeaderMutationRules{AllowAllRouting: wrapperspb.Bool(true), AllowEnvoy: wrapperspb.Bool(true)})
		lr := p.immediateReply(ir, loose)
		if lr.status < 200 {
			t.Fatalf("immediate status %d", lr.status)
		}
	})
}
