package app_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// dial opens a plaintext gRPC connection to target, closed after the test.
func dial(t *testing.T, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// attemptStream is one upstream attempt as Envoy drives it: request headers, then
// response headers, on one Process stream.
type attemptStream struct {
	t      *testing.T
	stream extprocv3.ExternalProcessor_ProcessClient
}

// startAttempt opens a stream for pool and sends the request headers of attempt n
// of request id; it returns the value of the auth header the server injected ("" if
// none) and the stream, ready for the response headers.
func startAttempt(ctx context.Context, t *testing.T, conn *grpc.ClientConn, pool, id string, n int) (string, *attemptStream, error) {
	t.Helper()
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(metadata.AppendToOutgoingContext(ctx, "x-keypool-pool", pool))
	if err != nil {
		return "", nil, err
	}
	if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":path", RawValue: []byte("/v1/chat/completions")},
			{Key: "x-request-id", RawValue: []byte(id)},
			{Key: "x-envoy-attempt-count", RawValue: []byte(strconv.Itoa(n))},
		}}},
	}}); err != nil {
		return "", nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return "", nil, err
	}
	var key string
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == "authorization" {
			key = strings.TrimPrefix(string(h.GetHeader().GetRawValue()), "Bearer ")
		}
	}
	return key, &attemptStream{t: t, stream: stream}, nil
}

// finish sends the provider's response status and returns the retry marker the
// server added ("" if none), then ends the stream as Envoy does. A 429 says when to
// come back (Retry-After: 30), as providers' rate limits do.
func (a *attemptStream) finish(status int) (string, error) {
	headers := []*corev3.HeaderValue{{Key: ":status", RawValue: []byte(strconv.Itoa(status))}}
	if status == 429 {
		headers = append(headers, &corev3.HeaderValue{Key: "retry-after", RawValue: []byte("30")})
	}
	if err := a.stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: headers}},
	}}); err != nil {
		return "", err
	}
	resp, err := a.stream.Recv()
	if err != nil {
		return "", err
	}
	if resp.GetResponseHeaders() == nil {
		return "", errUnexpected(resp)
	}
	var marker string
	for _, h := range resp.GetResponseHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == "x-keypool-retry" {
			marker = string(h.GetHeader().GetRawValue())
		}
	}
	if err := a.stream.CloseSend(); err != nil {
		return marker, err
	}
	if _, err := a.stream.Recv(); err != io.EOF {
		return marker, err
	}
	return marker, nil
}

type unexpectedAnswer struct{ resp *extprocv3.ProcessingResponse }

func (e unexpectedAnswer) Error() string { return "unexpected answer: " + e.resp.String() }

func errUnexpected(resp *extprocv3.ProcessingResponse) error { return unexpectedAnswer{resp} }

// request is one whole request: attempts until the server stops asking for a retry.
// It returns the key that served it (answered 200) or the error.
func request(ctx context.Context, t *testing.T, conn *grpc.ClientConn, pool, id string, statusOf func(key string) int) (string, error) {
	t.Helper()
	for n := 1; n <= 10; n++ {
		key, a, err := startAttempt(ctx, t, conn, pool, id, n)
		if err != nil {
			return "", err
		}
		code := statusOf(key)
		marker, err := a.finish(code)
		if err != nil {
			return "", err
		}
		if marker == "" {
			return key, nil
		}
	}
	return "", io.ErrUnexpectedEOF
}

// firstKey is the key the next request's first attempt gets.
func firstKey(ctx context.Context, t *testing.T, conn *grpc.ClientConn, pool string) string {
	t.Helper()
	key, a, err := startAttempt(ctx, t, conn, pool, "probe-"+strconv.FormatInt(time.Now().UnixNano(), 10), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.finish(200); err != nil {
		t.Fatal(err)
	}
	return key
}

type adminKey struct {
	ID        string `json:"id"`
	Available bool   `json:"available"`
	Reason    string `json:"reason"`
}

// adminKeys reads /v1/keys: pool → keys in order.
func adminKeys(t *testing.T, adminAddr, token string) map[string][]adminKey {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+adminAddr+"/v1/keys", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Pools []struct {
			Name string     `json:"name"`
			Keys []adminKey `json:"keys"`
		} `json:"pools"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	out := map[string][]adminKey{}
	for _, p := range body.Pools {
		out[p.Name] = p.Keys
	}
	return out
}

// metric returns the text of /metrics.
func metrics(t *testing.T, adminAddr string) string {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
