package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/config"
)

func readListen(t *testing.T, yaml string) (*config.Config, error) {
	t.Helper()
	return config.Read(strings.NewReader(yaml+validPool), env(map[string]string{"K1": "v1-0123456789abcdef"}))
}

func TestListenDefaultsReachNoOtherHost(t *testing.T) {
	c, err := readListen(t, "")
	if err != nil {
		t.Fatal(err)
	}
	l := c.Listen
	if l.GRPC != "127.0.0.1:9001" || l.Admin != ":9002" || l.IsUnix() || l.TLS != nil {
		t.Errorf("listen defaults = %+v", l)
	}
	if exposed, why := l.Exposed(); exposed {
		t.Errorf("the default listener is exposed: %s", why)
	}
	if l.MaxConcurrentStreams != 1024 || l.MaxMessageBytes != 4<<20 {
		t.Errorf("limits = %d streams, %d bytes", l.MaxConcurrentStreams, l.MaxMessageBytes)
	}
	if c.Shutdown.Drain() != 10*time.Second || c.Shutdown.Timeout.Std() != 30*time.Second {
		t.Errorf("shutdown = drain %s, timeout %s", c.Shutdown.Drain(), c.Shutdown.Timeout.Std())
	}
}

func TestDrainDelayZeroIsKept(t *testing.T) {
	c, err := readListen(t, "shutdown: {drain_delay: 0s, timeout: 5s}\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Shutdown.Drain() != 0 || c.Shutdown.Timeout.Std() != 5*time.Second {
		t.Errorf("shutdown = drain %s, timeout %s; want 0s and 5s", c.Shutdown.Drain(), c.Shutdown.Timeout.Std())
	}
}

func TestUnixSocketListener(t *testing.T) {
	for _, tt := range []struct{ grpc, path string }{
		{"unix:/run/envoy-keypool/extproc.sock", "/run/envoy-keypool/extproc.sock"},
		{"unix:///run/envoy-keypool/extproc.sock", "/run/envoy-keypool/extproc.sock"},
	} {
		c, err := readListen(t, "listen: {grpc: \""+tt.grpc+"\"}\n")
		if err != nil {
			t.Fatal(err)
		}
		if !c.Listen.IsUnix() || c.Listen.SocketPath() != tt.path || c.Listen.SocketFileMode() != 0o660 {
			t.Errorf("%s: unix %v path %q mode %o", tt.grpc, c.Listen.IsUnix(), c.Listen.SocketPath(), c.Listen.SocketFileMode())
		}
		if exposed, _ := c.Listen.Exposed(); exposed {
			t.Errorf("%s: a Unix socket counts as exposed", tt.grpc)
		}
	}
}

func TestExposedListenerIsNamed(t *testing.T) {
	tls := "tls: {cert_file: /c.pem, key_file: /k.pem"
	tests := []struct {
		name, listen string
		exposed      bool
		why          string
	}{
		{"every interface, plaintext", `{grpc: "0.0.0.0:9001"}`, true, "every interface over plaintext"},
		{"empty host, plaintext", `{grpc: ":9001"}`, true, "every interface over plaintext"},
		{"pod address, plaintext", `{grpc: "10.1.2.3:9001"}`, true, "on 10.1.2.3 over plaintext"},
		{"IPv6 any, TLS without client certificates", `{grpc: "[::]:9001", ` + tls + `}}`, true, "TLS without client certificates"},
		{"every interface, mutual TLS", `{grpc: "0.0.0.0:9001", ` + tls + `, client_ca_file: /ca.pem}}`, false, ""},
		{"IPv4 loopback", `{grpc: "127.0.0.1:9001"}`, false, ""},
		{"IPv6 loopback", `{grpc: "[::1]:9001"}`, false, ""},
		{"localhost", `{grpc: "localhost:9001"}`, false, ""},
		{"Unix socket for its group", `{grpc: "unix:/run/k.sock", socket_mode: "0660"}`, false, ""},
		{"Unix socket for every local user", `{grpc: "unix:/run/k.sock", socket_mode: "0666"}`, true, "every local user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := readListen(t, "listen: "+tt.listen+"\n")
			if err != nil {
				t.Fatal(err)
			}
			exposed, why := c.Listen.Exposed()
			if exposed != tt.exposed || !strings.Contains(why, tt.why) {
				t.Errorf("Exposed() = %v %q, want %v containing %q", exposed, why, tt.exposed, tt.why)
			}
			if exposed && !strings.Contains(why, "client_ca_file") && !strings.Contains(why, "0660") {
				t.Errorf("the warning does not say how to fix it: %q", why)
			}
		})
	}
}

func TestBadListenNamesTheField(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"relative socket path", `listen: {grpc: "unix:run/x.sock"}`, "listen.grpc: \"unix:run/x.sock\": the socket path must be absolute"},
		{"socket path too long", `listen: {grpc: "unix:/` + strings.Repeat("a", 120) + `"}`, "listen.grpc: socket path is 121 bytes"},
		{"socket mode not octal", `listen: {grpc: "unix:/run/x.sock", socket_mode: "rw-rw----"}`, "listen.socket_mode: \"rw-rw----\" is not an octal file mode"},
		{"socket mode owner cannot write", `listen: {grpc: "unix:/run/x.sock", socket_mode: "0440"}`, "listen.socket_mode: \"0440\": the owner needs write permission"},
		{"socket mode on TCP", `listen: {grpc: "127.0.0.1:1", socket_mode: "0600"}`, "listen.socket_mode: only with a unix: listen.grpc"},
		{"TLS on a Unix socket", `listen: {grpc: "unix:/run/x.sock", tls: {cert_file: /c, key_file: /k}}`, "listen.tls: TLS is for a TCP listen.grpc"},
		{"TLS without key", `listen: {tls: {cert_file: /c.pem}}`, "listen.tls.key_file: missing"},
		{"TLS relative file", `listen: {tls: {cert_file: c.pem, key_file: /k.pem}}`, "listen.tls.cert_file: \"c.pem\" is not an absolute path"},
		{"grpc not an address", `listen: {grpc: "9001"}`, "listen.grpc: \"9001\" is neither host:port nor unix:/path"},
		{"grpc port not a number", `listen: {grpc: "127.0.0.1:http"}`, "listen.grpc: \"127.0.0.1:http\": port \"http\" is not a number"},
		{"admin not an address", `listen: {admin: "localhost"}`, "listen.admin: \"localhost\" is not host:port"},
		{"same address twice", `listen: {grpc: "127.0.0.1:9001", admin: "127.0.0.1:9001"}`, "listen.admin: same address as listen.grpc"},
		{"too few streams", `listen: {max_concurrent_streams: 4}`, "listen.max_concurrent_streams: 4 is below 16"},
		{"messages too small", `listen: {max_message_bytes: 1024}`, "listen.max_message_bytes: 1024 is below 64 KiB"},
		{"negative drain delay", `shutdown: {drain_delay: -1s}`, "shutdown.drain_delay: -1s is negative"},
		{"negative timeout", `shutdown: {timeout: -5s}`, "shutdown.timeout: -5s is not positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readListen(t, tt.yaml+"\n")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}
