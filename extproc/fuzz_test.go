package extproc

import (
	"context"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

func fuzzServer(t testing.TB) *Server {
	t.Helper()
	targets := map[string]*Target{}
	for _, name := range []string{"openai", "anthropic", "gemini"} {
		pool, err := keypool.NewPool(keypool.PoolOptions{Name: name, Keys: []keypool.Key{
			keypool.NewKey(name, "a", "fuzz-key-value-aaaaaaaaaaaa"), keypool.NewKey(name, "b", "fuzz-key-value-bbbbbbbbbbbb"),
		}})
		if err != nil {
			t.Fatal(err)
		}
		prov, _ := providers.New(name)
		targets[name] = &Target{Pool: pool, Provider: prov, AllowBYOK: name == "anthropic", ModelHeader: "x-keypool-model"}
	}
	s, err := NewServer(Options{Targets: targets, ClassifyBodies: true, Headers: Headers{
		PoolMetadataKey: "x-keypool-pool", RequestID: "x-request-id",
		AttemptCount: "x-envoy-attempt-count", RetryMarker: "x-keypool-retry",
	}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func seedMessage(f *testing.F, req *extprocv3.ProcessingRequest) []byte {
	f.Helper()
	b, err := proto.Marshal(req)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func hdrs(kv ...string) *extprocv3.HttpHeaders {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return &extprocv3.HttpHeaders{Headers: hm}
}

// FuzzAttemptHandle plays arbitrary message sequences on one stream: every message
// that expects an answer gets one of its own kind (or a local reply on request
// headers), and every answer passes the API's validation rules.
func FuzzAttemptHandle(f *testing.F) {
	reqH := seedMessage(f, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: hdrs("x-request-id", "r", "x-envoy-attempt-count", "2", "authorization", "Bearer x")}})
	respH := seedMessage(f, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: hdrs(":status", "429", "retry-after", "5", "x-ratelimit-reset-tokens", "6m0s")}})
	body := seedMessage(f, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
		RequestBody: &extprocv3.HttpBody{Body: []byte("{}")}}})
	sizedRespH := seedMessage(f, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: hdrs(":status", "429", "content-length", "120")}})
	gemini400 := seedMessage(f, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: hdrs(":status", "400", "content-length", "300")}})
	errBody := seedMessage(f, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(`{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}`), EndOfStream: true}}})
	geminiBody := seedMessage(f, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(`{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}`), EndOfStream: true}}})
	geminiReqH := seedMessage(f, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: hdrs(":path", "/v1beta/models/gemini-2.0-flash:generateContent?key=client&alt=sse", "x-request-id", "g", "x-envoy-attempt-count", "1")}})
	f.Add("openai", reqH, respH, body)
	f.Add("anthropic", reqH, respH, respH)
	f.Add("openai", reqH, sizedRespH, errBody)
	f.Add("gemini", geminiReqH, gemini400, geminiBody)
	f.Add("gemini", geminiReqH, sizedRespH, []byte{})
	f.Add("nope", respH, reqH, []byte{})
	f.Add("", []byte{0xff, 0x01}, reqH, reqH)
	f.Fuzz(func(t *testing.T, pool string, m1, m2, m3 []byte) {
		s := fuzzServer(t)
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-keypool-pool", pool))
		a := s.newAttempt(ctx)
		for _, raw := range [][]byte{m1, m2, m3} {
			req := &extprocv3.ProcessingRequest{}
			if proto.Unmarshal(raw, req) != nil {
				continue // gRPC would reject it before the server sees it
			}
			resp := a.handle(ctx, req)
			if req.GetRequest() == nil || req.GetObservabilityMode() {
				if resp != nil {
					t.Fatalf("answered a message that expects no answer: %v", resp)
				}
				continue
			}
			if resp == nil {
				t.Fatalf("no answer to %v", req)
			}
			if err := resp.ValidateAll(); err != nil {
				t.Fatalf("answer fails validation: %v\n%v", err, resp)
			}
			if !answerMatches(req, resp) {
				t.Fatalf("answer %v does not match message %v", resp, req)
			}
		}
	})
}

func answerMatches(req *extprocv3.ProcessingRequest, resp *extprocv3.ProcessingResponse) bool {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return resp.GetRequestHeaders() != nil || resp.GetImmediateResponse() != nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return resp.GetResponseHeaders() != nil
	case *extprocv3.ProcessingRequest_RequestBody:
		return resp.GetRequestBody() != nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		return resp.GetResponseBody() != nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return resp.GetRequestTrailers() != nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return resp.GetResponseTrailers() != nil
	}
	return false
}

// FuzzRequestView checks the one-pass view of the request headers against a plain
// lookup: every header the server or a provider may ask for reads the same.
func FuzzRequestView(f *testing.F) {
	f.Add([]byte("authorization\x00Bearer a\x00:path\x00/v1?key=x\x00x-request-id\x00r\x00authorization\x00Bearer b"))
	f.Add([]byte("x-keypool-model\x00gpt-4o\x00x-api-key\x00k\x00x-envoy-attempt-count\x002"))
	f.Add([]byte(""))
	names := &requestNames{requestID: "x-request-id", attempt: "x-envoy-attempt-count", model: "x-keypool-model"}
	copy(names.credentials[:], providers.CredentialHeaders())
	lookups := append([]string{":path", "x-request-id", "x-envoy-attempt-count", "x-keypool-model", "content-type", ""},
		providers.CredentialHeaders()...)
	f.Fuzz(func(t *testing.T, raw []byte) {
		parts := strings.Split(string(raw), "\x00")
		hm := &corev3.HeaderMap{}
		for i := 0; i+1 < len(parts); i += 2 {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: parts[i], RawValue: []byte(parts[i+1])})
		}
		v := readRequest(hm.Headers, names)
		plain := headerView{hm.Headers}
		for _, name := range lookups {
			if got, want := v.Get(name), plain.Get(name); got != want {
				t.Fatalf("Get(%q) = %q, want %q", name, got, want)
			}
		}
		if got, want := headerValue(v.model), plain.Get(names.model); got != want {
			t.Fatalf("model header %q, want %q", got, want)
		}
	})
}
