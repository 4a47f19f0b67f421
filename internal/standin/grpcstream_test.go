package standin

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// rawReplica is an ext_proc replica that misbehaves at the HTTP/2 level, the way a
// replica going away does: it refuses every stream (REFUSED_STREAM), or drops the
// connection once a stream's request arrived, or never answers.
type rawReplica struct {
	addr    string
	streams atomic.Int64
}

type rawMode int

const (
	rawRefuse rawMode = iota // RST_STREAM REFUSED_STREAM, as for streams racing a GOAWAY
	rawDrop                  // close the connection after the request's first message
	rawSilent                // accept the stream and never answer
)

func startRawReplica(t *testing.T, mode rawMode) *rawReplica {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	r := &rawReplica{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.serve(c, mode)
		}
	}()
	return r
}

func (r *rawReplica) serve(c net.Conn, mode rawMode) {
	defer c.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil {
		return
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		return
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = fr.WritePing(true, f.Data)
			}
		case *http2.HeadersFrame:
			r.streams.Add(1)
			if mode == rawRefuse {
				_ = fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
			}
		case *http2.DataFrame:
			if mode == rawDrop && len(f.Data()) > 0 {
				return
			}
		}
	}
}

func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// A stream that cannot be carried by the first replica goes to another when
// grpc_service.retry_policy names the failure: the gRPC client retries with the route
// semantics of retry_state_impl.cc on a new pick of the cluster's load balancer, the
// messages already sent replayed (ext_proc.cc openStream: setBufferBodyForRetry with a
// retry policy). A connect failure is not "started"; a refused or dropped stream is,
// once its headers reached the codec. Without a policy, or when the policy does not
// name the failure, the stream fails and the client gets status_on_error.
func TestExtProcStreamRetryPolicy(t *testing.T) {
	policy := func(retryOn string) string {
		return "{retry_on: \"" + retryOn + "\", num_retries: 1, retry_back_off: {base_interval: 0.001s}}"
	}
	tests := []struct {
		name       string
		first      func(t *testing.T) string
		policy     string
		thresholds string
		want       int
	}{
		{"refused connection, no policy", closedAddr, "", "", 500},
		{"refused connection, connect-failure", closedAddr, policy("connect-failure"), "", 200},
		{"refused connection, reset-before-request", closedAddr, policy("reset-before-request"), "", 200},
		{"refused connection, retries over max_retries", closedAddr, policy("connect-failure"), "{max_retries: 0}", 500},
		{"refused stream, refused-stream", rawAddr(rawRefuse), policy("refused-stream"), "", 200},
		{"refused stream, reset-before-request", rawAddr(rawRefuse), policy("reset-before-request"), "", 500},
		{"refused stream, connect-failure", rawAddr(rawRefuse), policy("connect-failure"), "", 500},
		{"dropped after the request, reset", rawAddr(rawDrop), policy("reset"), "", 200},
		{"dropped after the request, reset-before-request", rawAddr(rawDrop), policy("reset-before-request"), "", 500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, nil)
			ep := startFakeExtProc(t, nil)
			p := params{"NoHealthCheck": "true", "GrpcRetryPolicy": tc.policy, "KeypoolThresholds": tc.thresholds}
			px := startProxy(t, "keypool_cluster.yaml", p, map[string][]string{"openai": {up.addr()}, "keypool": {tc.first(t), ep.addr}})
			// Round robin starts at the first endpoint, the failing replica.
			st, _, body := do(t, px, "POST", "/v1/chat/completions", "{}", nil)
			if st != tc.want {
				t.Fatalf("status %d %q, want %d", st, body, tc.want)
			}
			if tc.want == 200 {
				s := ep.recorded()
				if len(s) != 1 || len(s[0].requests) != 2 || s[0].requests[0].GetRequestHeaders() == nil {
					t.Fatalf("the good replica saw %d streams, want one carrying the replayed request headers and the response headers", len(s))
				}
				if px.Stats().GrpcRetries != 1 {
					t.Errorf("gRPC retries %d, want 1", px.Stats().GrpcRetries)
				}
			}
			if n := len(up.recorded()); (n == 1) != (tc.want == 200) {
				t.Errorf("provider reached %d times", n)
			}
		})
	}
}

func rawAddr(mode rawMode) func(t *testing.T) string {
	return func(t *testing.T) string { return startRawReplica(t, mode).addr }
}

// message_timeout starts when the message is sent, right after the stream is opened
// and before any connection exists (ext_proc.cc onHeaders: openStream, then
// onStartProcessorCall), so it also bounds the connect and the TLS handshake: a
// replica that never completes either costs message_timeout (504), not
// connect_timeout.
func TestMessageTimeoutCoversConnect(t *testing.T) {
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hang.Close() })
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = c.Close() }) // never answers the TLS ClientHello
		}
	}()
	tests := []struct {
		name string
		p    params
		addr string
	}{
		{"TLS handshake never completes", params{"KeypoolTLS": "sni: keypool", "KeypoolConnectTimeout": "10s"}, hang.Addr().String()},
		{"stream never answered", nil, startRawReplica(t, rawSilent).addr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, nil)
			p := params{"NoHealthCheck": "true", "MessageTimeout": "0.2s"}
			for k, v := range tc.p {
				p[k] = v
			}
			px := startProxy(t, "keypool_cluster.yaml", p, map[string][]string{"openai": {up.addr()}, "keypool": {tc.addr}})
			start := time.Now()
			st, _, _ := do(t, px, "GET", "/v1/models", "", nil)
			if st != 504 {
				t.Fatalf("status %d, want 504 (message_timeout)", st)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("answered after %s: the connect timeout, not message_timeout, ended the request", d)
			}
		})
	}
}

// The envoy_keypool cluster over a Unix domain socket (an Envoy pipe address): the
// stand-in dials the path, for the streams and for the gRPC health checks.
func TestExtProcOverUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "standin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "keypool.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ep := startFakeExtProcOn(t, ln, markOn())
	up := startUpstream(t, nil)
	px := startProxy(t, "keypool_cluster.yaml", params{"KeypoolAddress": "{pipe: {path: \"" + path + "\"}}"}, map[string][]string{"openai": {up.addr()}})
	if got := px.HealthyEndpoints("keypool"); len(got) != 1 || got[0] != path {
		t.Fatalf("healthy endpoints %v, want the socket (health checks over the pipe)", got)
	}
	if st, _, _ := do(t, px, "GET", "/v1/models", "", nil); st != 200 {
		t.Fatalf("status %d", st)
	}
	if got := up.recorded()[0].header.Get("Authorization"); got != "Bearer key-0" {
		t.Fatalf("authorization %q, want the key the ext_proc server set over the socket", got)
	}
	if len(ep.recorded()) != 1 {
		t.Fatalf("%d streams over the socket", len(ep.recorded()))
	}
}

// The envoy_keypool cluster over TLS with a client certificate (mTLS): the
// transport_socket's UpstreamTlsContext carries tls_certificates and the CA to check
// the server with; a server that requires client certificates refuses a cluster
// without one, and the client gets status_on_error.
func TestExtProcOverMTLS(t *testing.T) {
	pki := newTestPKI(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca, cert, key := write("ca.pem", pki.caPEM), write("client.pem", pki.clientCert), write("client-key.pem", pki.clientKey)
	tests := []struct {
		name   string
		common string
		want   int
	}{
		{"client certificate", "{tls_certificates: [{certificate_chain: {filename: " + cert + "}, private_key: {filename: " + key + "}}], validation_context: {trusted_ca: {filename: " + ca + "}}}", 200},
		{"no client certificate", "{validation_context: {trusted_ca: {filename: " + ca + "}}}", 500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pki.serverCert}, ClientCAs: pki.pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
			ep := startFakeExtProcOn(t, ln, markOn(), grpc.Creds(creds))
			up := startUpstream(t, nil)
			px := startProxy(t, "keypool_cluster.yaml", params{"KeypoolTLS": "sni: envoy-keypool\n        common_tls_context: " + tc.common, "NoHealthCheck": "true"},
				map[string][]string{"openai": {up.addr()}, "keypool": {ep.addr}})
			st, _, _ := do(t, px, "GET", "/v1/models", "", nil)
			if st != tc.want {
				t.Fatalf("status %d, want %d", st, tc.want)
			}
			if tc.want == 200 {
				if got := up.recorded()[0].header.Get("Authorization"); got != "Bearer key-0" {
					t.Fatalf("authorization %q", got)
				}
				return
			}
			if n := len(up.recorded()); n != 0 {
				t.Fatalf("provider reached %d times without ext_proc", n)
			}
			if n := len(ep.recorded()); n != 0 {
				t.Fatalf("a client without a certificate opened %d streams", n)
			}
		})
	}
}

// previous_hosts: a retry re-picks to avoid the hosts already tried, up to
// host_selection_retry_max_attempts (RetryStateImpl::shouldSelectAnotherHost).
func TestPickAvoidingPreviousHosts(t *testing.T) {
	c := &upstreamCluster{cfg: &clusterConfig{panicPct: 50}}
	a, b := &host{addr: "a"}, &host{addr: "b"}
	a.healthy.Store(true)
	b.healthy.Store(true)
	c.hosts = []*host{a, b}
	c.rr.Store(2) // the next plain pick is a
	if got := c.pickAvoiding([]*host{a}, 0); got != a {
		t.Fatalf("without attempts got %s, want a (round robin)", got.addr)
	}
	c.rr.Store(2)
	if got := c.pickAvoiding([]*host{a}, 1); got != b {
		t.Fatalf("with one attempt got %s, want b", got.addr)
	}
}
