package standin

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// startTLSUpstream is an HTTPS provider that records the SNI and protocol it saw.
func startTLSUpstream(t *testing.T, h2 bool) (*httptest.Server, func() (sni []string, proto []string)) {
	t.Helper()
	var mu sync.Mutex
	var snis, protos []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		protos = append(protos, r.Proto)
		mu.Unlock()
		_, _ = w.Write([]byte("secure " + r.Host))
	}))
	srv.EnableHTTP2 = h2
	srv.TLS = &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		mu.Lock()
		snis = append(snis, hello.ServerName)
		mu.Unlock()
		return nil, nil
	}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, func() ([]string, []string) {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), snis...), append([]string(nil), protos...)
	}
}

// Upstream HTTPS: the cluster's transport_socket sends its SNI and, with a
// validation_context, verifies the chain; without one Envoy does not verify, nor
// does the stand-in. The cluster's HTTP/2 setting picks the protocol.
func TestUpstreamTLS(t *testing.T) {
	tests := []struct {
		name      string
		p         params
		roots     bool
		h2        bool
		wantOK    bool
		wantProto string
	}{
		{"no validation context", nil, false, false, true, "HTTP/1.1"},
		{"verified with trusted roots", params{"TLSCommon": "{validation_context: {system_root_certs: {}}}"}, true, false, true, "HTTP/1.1"},
		{"verification fails without the CA", params{"TLSCommon": "{validation_context: {system_root_certs: {}}}"}, false, false, false, ""},
		{"SAN matches", params{"TLSCommon": "{validation_context: {system_root_certs: {}, match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: example.com}}]}}"}, true, false, true, "HTTP/1.1"},
		{"SAN mismatch", params{"TLSCommon": "{validation_context: {system_root_certs: {}, match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: api.openai.com}}]}}"}, true, false, false, ""},
		{"explicit HTTP/2", params{"Protocol": "explicit_http_config: {http2_protocol_options: {}}"}, false, true, true, "HTTP/2.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, seen := startTLSUpstream(t, tc.h2)
			var mod []func(*Options)
			if tc.roots {
				pool := x509.NewCertPool()
				pool.AddCert(srv.Certificate())
				mod = append(mod, func(o *Options) { o.RootCAs = pool })
			}
			px := startProxy(t, "tls.yaml", tc.p, map[string][]string{"openai": {strings.TrimPrefix(srv.URL, "https://")}}, mod...)
			st, _, body := do(t, px, "GET", "/v1/models", "", nil)
			if !tc.wantOK {
				if st != 503 {
					t.Fatalf("status %d, want 503 for a failed handshake", st)
				}
				return
			}
			if st != 200 || body != "secure api.openai.com" {
				t.Fatalf("got %d %q", st, body)
			}
			snis, protos := seen()
			if len(snis) == 0 || snis[0] != "api.openai.com" {
				t.Errorf("SNI %v, want api.openai.com", snis)
			}
			if len(protos) != 1 || protos[0] != tc.wantProto {
				t.Errorf("protocol %v, want %s", protos, tc.wantProto)
			}
		})
	}
}
