package app_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/app"
)

const poolsOnly = `
admin: {token: env:TEST_ADMIN_TOKEN}
log: {level: info, format: json}
pools:
  - name: openai
    provider: openai
    keys:
      - {id: one, secret: env:TEST_OPENAI_KEY_1}
      - {id: two, secret: env:TEST_OPENAI_KEY_2}
`

func TestUnixSocketServesWithItsFileMode(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "extproc.sock")
	r := start(t, fmt.Sprintf("listen: {grpc: \"unix:%s\", socket_mode: \"0600\", admin: \"127.0.0.1:0\"}\n", sock)+poolsOnly)
	if r.grpcAddr != "unix:"+sock {
		t.Errorf("ready line names %q, want unix:%s", r.grpcAddr, sock)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket file mode %v, want a socket with 0600", fi.Mode())
	}
	// Envoy's pipe address dials the path, as gRPC's unix: target does.
	key := firstKey(testContext(t), t, dial(t, "unix:"+sock), "openai")
	if key != testSecrets["TEST_OPENAI_KEY_1"] {
		t.Error("the Unix socket did not serve the first key")
	}
	if strings.Contains(r.stderr.String(), "INSECURE LISTENER") {
		t.Error("a Unix socket was reported as an insecure listener")
	}
	r.stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket file is still there after a clean stop: %v", err)
	}
}

func TestStaleSocketIsReplacedAndALiveOneRefused(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "extproc.sock")
	// A socket file left by a crash: bound, then the process is gone.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	cfg := fmt.Sprintf("listen: {grpc: \"unix:%s\", admin: \"127.0.0.1:0\"}\n", sock) + poolsOnly
	r := start(t, cfg)
	if key := firstKey(testContext(t), t, dial(t, "unix:"+sock), "openai"); key == "" {
		t.Fatal("no key over the socket that replaced a stale one")
	}
	// A second server on the same socket must not steal it.
	var stdout, stderr bytes.Buffer
	code := app.Main(context.Background(), []string{"serve", "--config", r.configPath}, &stdout, &stderr)
	if code == 0 || !strings.Contains(stderr.String(), "another process is serving on this socket") {
		t.Errorf("second server: exit %d, stderr %q; want a refusal", code, stderr.String())
	}
}

// dialHelperEnv makes the test binary a client that dials a Unix socket and exits
// 0 when the connection is accepted, 3 when permission is denied.
const dialHelperEnv = "ENVOY_KEYPOOL_TEST_DIAL_UNIX"

func TestMain(m *testing.M) {
	if path := os.Getenv(dialHelperEnv); path != "" {
		c, err := net.Dial("unix", path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			if os.IsPermission(err) || strings.Contains(err.Error(), "permission denied") {
				os.Exit(3)
			}
			os.Exit(1)
		}
		c.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestUnixSocketRefusesAProcessWithoutPermission(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client under another uid")
	}
	// A directory every user may traverse, so that only the socket's own mode decides.
	dir, err := os.MkdirTemp("", "envoy-keypool-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The test binary, where the other user may run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "dial-helper")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	dialAs := func(sock string) int {
		cmd := exec.Command(bin)
		cmd.Env = []string{dialHelperEnv + "=" + sock}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		if err != nil && cmd.ProcessState == nil {
			t.Fatalf("run the helper: %v %s", err, out)
		}
		return cmd.ProcessState.ExitCode()
	}
	tests := []struct {
		name, mode string
		want       int
	}{
		{"owner and group only", "0660", 3},
		{"owner only", "0600", 3},
		{"everyone (the control)", "0666", 0},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(dir, fmt.Sprintf("extproc-%d.sock", i))
			start(t, fmt.Sprintf("listen: {grpc: \"unix:%s\", socket_mode: %q, admin: \"127.0.0.1:0\"}\n", sock, tt.mode)+poolsOnly)
			if got := dialAs(sock); got != tt.want {
				t.Errorf("uid %d dialing a %s socket: exit %d, want %d (0 connected, 3 permission denied)", nobody, tt.mode, got, tt.want)
			}
		})
	}
}

// testPKI is a CA with certificates it issued, written as PEM files.
type testPKI struct {
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caFile string
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &testPKI{dir: t.TempDir(), caCert: cert, caKey: key}
	p.caFile = p.write(t, name+"-ca.pem", "CERTIFICATE", der)
	return p
}

func (p *testPKI) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue makes a certificate for name (a server's DNS name, or a client's) and
// returns its certificate and key files.
func (p *testPKI) issue(t *testing.T, name string, serial int64, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, fmt.Sprintf("%s-%d.pem", name, serial), "CERTIFICATE", der),
		p.write(t, fmt.Sprintf("%s-%d-key.pem", name, serial), "PRIVATE KEY", keyDER)
}

// tlsDial is a gRPC connection over TLS trusting ca, presenting the client
// certificate when certFile is set.
func tlsDial(t *testing.T, addr, caFile, certFile, keyFile string) *grpc.ClientConn {
	t.Helper()
	roots := x509.NewCertPool()
	pemData, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(pemData)
	cfg := &tls.Config{RootCAs: roots, ServerName: "envoy-keypool.test", MinVersion: tls.VersionTLS12}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return dial(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
}

func TestMutualTLSRefusesClientsWithoutTheRightCertificate(t *testing.T) {
	pki := newTestPKI(t, "keypool")
	serverCert, serverKey := pki.issue(t, "envoy-keypool.test", 10, x509.ExtKeyUsageServerAuth)
	envoyCert, envoyKey := pki.issue(t, "envoy", 20, x509.ExtKeyUsageClientAuth)
	other := newTestPKI(t, "other")
	strangerCert, strangerKey := other.issue(t, "envoy", 30, x509.ExtKeyUsageClientAuth)

	cfg := fmt.Sprintf("listen: {grpc: \"0.0.0.0:0\", admin: \"127.0.0.1:0\", tls: {cert_file: %s, key_file: %s, client_ca_file: %s}}\n",
		serverCert, serverKey, pki.caFile) + poolsOnly
	r := start(t, cfg)
	addr := "127.0.0.1:" + port(t, r.grpcAddr)
	ctx := testContext(t)

	if key := firstKey(ctx, t, tlsDial(t, addr, pki.caFile, envoyCert, envoyKey), "openai"); key != testSecrets["TEST_OPENAI_KEY_1"] {
		t.Fatal("Envoy's certificate did not get the first key")
	}
	refused := []struct {
		name string
		conn *grpc.ClientConn
	}{
		{"no client certificate", tlsDial(t, addr, pki.caFile, "", "")},
		{"a certificate of another CA", tlsDial(t, addr, pki.caFile, strangerCert, strangerKey)},
		{"plaintext", dial(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials()))},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			key, _, err := startAttempt(ctx, t, c.conn, "openai", "stranger", 1)
			if err == nil || key != "" {
				t.Fatalf("got a key (%v) and err %v; want the connection refused", key != "", err)
			}
		})
	}
	// 0.0.0.0 with mutual TLS is not exposed: no warning.
	if strings.Contains(r.stderr.String(), "INSECURE LISTENER") {
		t.Error("a mutual TLS listener was reported as insecure")
	}
}

func TestRotatedServerCertificateIsUsedForNewConnections(t *testing.T) {
	pki := newTestPKI(t, "keypool")
	certFile, keyFile := pki.issue(t, "envoy-keypool.test", 100, x509.ExtKeyUsageServerAuth)
	live := filepath.Join(t.TempDir(), "tls")
	if err := os.Mkdir(live, 0o700); err != nil {
		t.Fatal(err)
	}
	install := func(cert, key string) {
		for src, dst := range map[string]string{cert: "tls.crt", key: "tls.key"} {
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(live, "."+dst+".tmp")
			if err := os.WriteFile(tmp, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(live, dst)); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(certFile, keyFile)
	cfg := fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", admin: \"127.0.0.1:0\", tls: {cert_file: %s/tls.crt, key_file: %s/tls.key}}\n", live, live) + poolsOnly
	r := start(t, cfg)
	serial := func() int64 {
		pemData, _ := os.ReadFile(pki.caFile)
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pemData)
		c, err := tls.Dial("tcp", r.grpcAddr, &tls.Config{RootCAs: roots, ServerName: "envoy-keypool.test", NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if s := serial(); s != 100 {
		t.Fatalf("serial %d, want 100", s)
	}
	newCert, newKey := pki.issue(t, "envoy-keypool.test", 101, x509.ExtKeyUsageServerAuth)
	install(newCert, newKey)
	waitUntil(t, "the rotated certificate to be served", 10*time.Second, func() bool { return serial() == 101 })
	// A TLS client still gets keys on the new certificate.
	if key := firstKey(testContext(t), t, tlsDial(t, r.grpcAddr, pki.caFile, "", ""), "openai"); key == "" {
		t.Error("no key over TLS after the rotation")
	}
	// A broken certificate file keeps the one in use.
	unchanged := regexp.MustCompile(`envoy_keypool_config_reloads_total\{result="unchanged"\} \d+`)
	before := unchanged.FindString(metrics(t, r.adminAddr))
	if err := os.WriteFile(filepath.Join(live, "tls.crt"), []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.stderr.waitFor(testContext(t), regexp.MustCompile(`TLS certificate reload refused.*listen.tls.cert_file`)); err != nil {
		t.Fatal(err)
	}
	if s := serial(); s != 101 {
		t.Errorf("serial %d after a broken file, want the certificate in use (101)", s)
	}
	// The refused certificate is the reload's one result: an error, not "unchanged".
	waitUntil(t, "the refused certificate in the reload metrics", 10*time.Second, func() bool {
		return strings.Contains(metrics(t, r.adminAddr), "envoy_keypool_config_last_reload_successful 0")
	})
	if after := unchanged.FindString(metrics(t, r.adminAddr)); after != before {
		t.Errorf("a reload that refused the certificate counted as unchanged: %q, was %q", after, before)
	}
}

func TestExposedListenerWarnsLoudly(t *testing.T) {
	r := start(t, "listen: {grpc: \"0.0.0.0:0\", admin: \"127.0.0.1:0\"}\n"+poolsOnly)
	if _, err := r.stderr.waitFor(testContext(t), regexp.MustCompile(`INSECURE LISTENER: listen.grpc 0.0.0.0:0 accepts ext_proc streams on every interface over plaintext`)); err != nil {
		t.Error(err)
	}
	var stdout, stderr bytes.Buffer
	if code := app.Main(context.Background(), []string{"validate", "--config", r.configPath}, &stdout, &stderr); code != 0 {
		t.Fatalf("validate: exit %d %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "WARNING: listen.grpc 0.0.0.0:0 accepts ext_proc streams") {
		t.Errorf("validate did not warn: %q", stderr.String())
	}
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
