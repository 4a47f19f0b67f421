package standin

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/envoy-keypool/envoy-keypool/envoy"
)

func newHTTPStatus(code int) *typev3.HttpStatus {
	return &typev3.HttpStatus{Code: typev3.StatusCode(code)}
}

// params fill a fixture's {{...}} placeholders; unset ones take the fixture's default.
type params map[string]string

// fixture loads testdata/name through envoy.ParseBootstrap, the loader the project
// ships, after filling its placeholders.
func fixture(t *testing.T, name string, p params) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := template.New(name).Option("missingkey=zero").Parse(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	m := map[string]string{}
	for k, v := range p {
		m[k] = v
	}
	if err := tmpl.Execute(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// startProxy starts the stand-in on a free port with the given fixture and endpoints.
func startProxy(t *testing.T, name string, p params, endpoints map[string][]string, mod ...func(*Options)) *Proxy {
	t.Helper()
	bs, err := envoy.ParseBootstrap(fixture(t, name, p))
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	opts := Options{ListenAddr: "127.0.0.1:0", Endpoints: endpoints}
	if testing.Verbose() {
		opts.Log = testLogWriter{t}
	}
	for _, m := range mod {
		m(&opts)
	}
	px, err := New(bs, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := px.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = px.Close() })
	return px
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// upstream is a programmable provider stand-in that records what it received.
type upstream struct {
	srv *httptest.Server

	mu       sync.Mutex // protects the fields below
	requests []recordedRequest
	handler  func(n int, w http.ResponseWriter, r *http.Request)
}

type recordedRequest struct {
	remote string // the client address: one per upstream connection
	proto  string
	method string
	path   string
	host   string
	header http.Header
	body   string
}

func startUpstream(t *testing.T, handler func(n int, w http.ResponseWriter, r *http.Request)) *upstream {
	t.Helper()
	u := &upstream{handler: handler}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	n := len(u.requests)
	u.requests = append(u.requests, recordedRequest{remote: r.RemoteAddr, proto: r.Proto, method: r.Method, path: r.URL.RequestURI(), host: r.Host, header: r.Header.Clone(), body: string(body)})
	h := u.handler
	u.mu.Unlock()
	if h == nil {
		_, _ = io.WriteString(w, "ok")
		return
	}
	h(n, w, r)
}

func (u *upstream) addr() string { return strings.TrimPrefix(u.srv.URL, "http://") }

func (u *upstream) recorded() []recordedRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]recordedRequest(nil), u.requests...)
}

// get sends a request through the proxy and returns status, headers and body.
func do(t *testing.T, px *Proxy, method, path, body string, hdr map[string]string) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+px.Addr()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if strings.EqualFold(k, "host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	client := &http.Client{Timeout: 20 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// keypoolSetup starts an upstream and a fake ext_proc server and the stand-in on the
// keypool_cluster.yaml fixture.
func keypoolSetup(t *testing.T, p params, answer answerFunc, handler func(n int, w http.ResponseWriter, r *http.Request), mod ...func(*Options)) (*Proxy, *fakeExtProc, *upstream) {
	t.Helper()
	up := startUpstream(t, handler)
	ep := startFakeExtProc(t, answer)
	px := startProxy(t, "keypool_cluster.yaml", p, map[string][]string{"openai": {up.addr()}, "keypool": {ep.addr}}, mod...)
	return px, ep, up
}

// markOn answers request headers by setting authorization to key-<stream> and marks
// response headers with the retry marker while status is in failing.
func markOn(failing ...int) answerFunc {
	return func(stream int, req *extprocv3.ProcessingRequest) answer {
		if req.GetRequestHeaders() != nil {
			return answer{resp: headersResponse(req, &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("authorization", "Bearer key-"+strconv.Itoa(stream))}})}
		}
		st, _ := headerOf(req, ":status")
		for _, f := range failing {
			if st == strconv.Itoa(f) {
				return answer{resp: headersResponse(req, &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("x-keypool-retry", "1")}})}
			}
		}
		return answer{}
	}
}
