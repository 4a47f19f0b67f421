package standin

import (
	"bufio"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/envoy-keypool/envoy-keypool/envoy"
)

// The generated config's override rules (envoycfg): the server may switch
// response_body_mode to BUFFERED, nothing else.
const modeOverrideConfig = "allow_mode_override: true\n" +
	"            allowed_override_modes: [{request_header_mode: SEND, response_header_mode: SEND, request_body_mode: NONE, response_body_mode: BUFFERED, request_trailer_mode: SKIP, response_trailer_mode: SKIP}]"

// bodyOnFailure is the server side of "body on failures only": on a failure status it
// asks for the body with mode_override, and marks the retry on the body answer.
type bodyOnFailure struct {
	mu     sync.Mutex // protects bodies
	bodies []string   // response bodies the server received
	mutate func(*extprocv3.CommonResponse)
}

func (b *bodyOnFailure) answer(stream int, req *extprocv3.ProcessingRequest) answer {
	switch {
	case req.GetRequestHeaders() != nil:
		return answer{resp: headersResponse(req, &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("authorization", "Bearer key-"+strconv.Itoa(stream))}})}
	case req.GetResponseHeaders() != nil:
		st, _ := headerOf(req, ":status")
		resp := headersResponse(req, &extprocv3.HeaderMutation{})
		if st != "200" {
			resp.ModeOverride = &extprocfilterv3.ProcessingMode{ResponseBodyMode: extprocfilterv3.ProcessingMode_BUFFERED}
		}
		return answer{resp: resp}
	case req.GetResponseBody() != nil:
		b.mu.Lock()
		b.bodies = append(b.bodies, string(req.GetResponseBody().GetBody()))
		b.mu.Unlock()
		cr := &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("x-keypool-retry", "1")}}}
		if b.mutate != nil {
			b.mutate(cr)
		}
		return answer{resp: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: cr}}}}
	}
	return answer{}
}

func (b *bodyOnFailure) seen() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.bodies...)
}

// A response-headers answer with mode_override switching response_body_mode to
// BUFFERED (allowed by allow_mode_override and allowed_override_modes,
// ext_proc.cc onReceiveMessage) holds the headers, buffers the body and sends it in
// one message; the header mutation of the body answer goes to the held headers
// (processor_state.cc handleBufferedBodyCallback → processHeaderMutationIfAvailable),
// so the router sees the marker, retries, and drops the buffered body (router.cc
// onUpstreamData returns early with no upstream request, PR #41879).
func TestModeOverrideBodyOnFailure(t *testing.T) {
	const errBody = `{"error":{"type":"insufficient_quota"}}`
	tests := []struct {
		name        string
		extra       string
		mutate      func(*extprocv3.CommonResponse)
		wantStatus  int
		wantBody    string
		wantTries   int
		wantBodies  int // body messages the server received
		wantMessage int // messages on the first stream
	}{
		{"marker on the body answer retries", modeOverrideConfig, nil, 200, "ok", 2, 1, 3},
		{"override outside allowed_override_modes is ignored",
			"allow_mode_override: true\n            allowed_override_modes: [{response_header_mode: SKIP, response_body_mode: BUFFERED, request_trailer_mode: SKIP, response_trailer_mode: SKIP}]",
			nil, 429, errBody, 1, 0, 2},
		{"body mutation of the same length replaces the body", modeOverrideConfig, func(cr *extprocv3.CommonResponse) {
			cr.HeaderMutation = nil
			cr.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(strings.ToUpper(errBody))}}
		}, 429, strings.ToUpper(errBody), 1, 1, 3},
		{"body mutation against content-length fails the message", modeOverrideConfig, func(cr *extprocv3.CommonResponse) {
			cr.HeaderMutation = nil
			cr.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte("short")}}
		}, 500, "", 1, 1, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := &bodyOnFailure{mutate: tc.mutate}
			px, ep, up := keypoolSetup(t, params{"ExtProcExtra": tc.extra}, srv.answer, func(n int, w http.ResponseWriter, _ *http.Request) {
				if n == 0 {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusTooManyRequests)
					_, _ = w.Write([]byte(errBody))
					return
				}
				_, _ = w.Write([]byte("ok"))
			})
			st, hdr, body := do(t, px, "POST", "/v1/chat/completions", "{}", nil)
			if st != tc.wantStatus || (tc.wantBody != "" && body != tc.wantBody) {
				t.Fatalf("got %d %q, want %d %q", st, body, tc.wantStatus, tc.wantBody)
			}
			if hdr.Get("X-Keypool-Retry") != "" {
				t.Error("marker reached the client")
			}
			if n := len(up.recorded()); n != tc.wantTries {
				t.Errorf("%d attempts, want %d", n, tc.wantTries)
			}
			bodies := srv.seen()
			if len(bodies) != tc.wantBodies || (tc.wantBodies > 0 && bodies[0] != errBody) {
				t.Errorf("server got bodies %q, want the error body %d times", bodies, tc.wantBodies)
			}
			if n := len(ep.recorded()[0].requests); n != tc.wantMessage {
				t.Errorf("first stream carried %d messages, want %d", n, tc.wantMessage)
			}
		})
	}
}

// Override rules the stand-in cannot run (a body mode other than a BUFFERED response,
// or no allowed_override_modes at all) are refused at load, naming the field.
func TestModeOverrideRulesRefused(t *testing.T) {
	for name, extra := range map[string]string{
		"no allowed_override_modes": "allow_mode_override: true",
		"a STREAMED response body":  "allow_mode_override: true\n            allowed_override_modes: [{response_body_mode: STREAMED}]",
		"a BUFFERED request body":   "allow_mode_override: true\n            allowed_override_modes: [{request_body_mode: BUFFERED}]",
	} {
		t.Run(name, func(t *testing.T) {
			bs, err := envoy.ParseBootstrap(fixture(t, "keypool_cluster.yaml", params{"ExtProcExtra": extra}))
			if err != nil {
				t.Fatal(err)
			}
			_, err = New(bs, Options{ListenAddr: "127.0.0.1:0"})
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "allow") {
				t.Fatalf("New: %v, want ErrUnsupported naming the override rules", err)
			}
		})
	}
}

// A 200 is never held: the server does not ask for its body, and the stand-in
// streams it to the client chunk by chunk.
func TestModeOverrideNeverHoldsSuccess(t *testing.T) {
	srv := &bodyOnFailure{}
	release := make(chan struct{})
	px, _, _ := keypoolSetup(t, params{"ExtProcExtra": modeOverrideConfig}, srv.answer, func(_ int, w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("data: first\n\n"))
		http.NewResponseController(w).Flush()
		<-release
		_, _ = w.Write([]byte("data: last\n\n"))
	})
	defer close(release)
	resp, err := http.Post("http://"+px.Addr()+"/v1/chat/completions", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first line %q, %v: the 200 was held", line, err)
	}
	if got := srv.seen(); len(got) != 0 {
		t.Fatalf("server got %d bodies of a 200", len(got))
	}
}

// A body past the filter manager's buffer limit is not buffered: the upstream filter
// manager answers 500 (ActiveStreamEncoderFilter::responseDataTooLarge), which is a
// local reply and never retried.
func TestModeOverrideBodyPastBufferLimit(t *testing.T) {
	srv := &bodyOnFailure{}
	big := strings.Repeat("x", 2<<20)
	px, _, up := keypoolSetup(t, params{"ExtProcExtra": modeOverrideConfig, "ListenerBufferLimit": "1048576", "BufferLimit": "1048576"}, srv.answer,
		func(n int, w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(big))
		})
	st, _, body := do(t, px, "POST", "/v1/chat/completions", "{}", nil)
	if st != 500 || body != "Internal Server Error" {
		t.Fatalf("got %d %q, want the filter manager's 500", st, body)
	}
	if n := len(up.recorded()); n != 1 {
		t.Errorf("%d attempts: the 500 was retried", n)
	}
	if got := srv.seen(); len(got) != 0 {
		t.Errorf("server got a body past the limit")
	}
}

// message_timeout for the body message starts when the body is sent
// (Filter::sendBodyChunk → onStartProcessorCall): a provider slower than
// message_timeout to send its error body costs nothing, a server slower than
// message_timeout to answer the body message is a 504.
func TestModeOverrideBodyMessageTimeout(t *testing.T) {
	const mt = 100 * time.Millisecond
	t.Run("slow provider body", func(t *testing.T) {
		srv := &bodyOnFailure{}
		px, _, _ := keypoolSetup(t, params{"ExtProcExtra": modeOverrideConfig, "MessageTimeout": "0.1s"}, srv.answer,
			func(n int, w http.ResponseWriter, _ *http.Request) {
				if n > 0 {
					_, _ = w.Write([]byte("ok"))
					return
				}
				w.WriteHeader(http.StatusTooManyRequests)
				http.NewResponseController(w).Flush()
				// Observation window: the body comes 3 message timeouts after the headers.
				<-time.After(3 * mt)
				_, _ = w.Write([]byte(`{"error":"slow"}`))
			})
		if st, _, body := do(t, px, "POST", "/v1/chat/completions", "{}", nil); st != 200 {
			t.Fatalf("got %d %q: the message timer ran while the body was awaited", st, body)
		}
	})
	t.Run("slow body answer", func(t *testing.T) {
		srv := &bodyOnFailure{}
		slow := func(stream int, req *extprocv3.ProcessingRequest) answer {
			if req.GetResponseBody() != nil {
				return answer{block: true}
			}
			return srv.answer(stream, req)
		}
		px, _, _ := keypoolSetup(t, params{"ExtProcExtra": modeOverrideConfig, "MessageTimeout": "0.1s"}, slow,
			func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusTooManyRequests)
				_, _ = w.Write([]byte(`{"error":"x"}`))
			})
		if st, _, _ := do(t, px, "POST", "/v1/chat/completions", "{}", nil); st != 504 {
			t.Fatalf("status %d, want 504 for an unanswered body message", st)
		}
	})
}
