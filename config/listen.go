package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Listen holds the listeners and the limits of the ext_proc server.
type Listen struct {
	// GRPC serves ext_proc and the gRPC health service, for Envoy: "host:port", or
	// "unix:/path/to.sock" for a Unix domain socket (sidecar deployments; Envoy's
	// `pipe` address). Default "127.0.0.1:9001": whoever can open an ext_proc stream
	// receives a key, so the default reaches no other host.
	GRPC string `yaml:"grpc"`
	// SocketMode is the file mode of the Unix domain socket of GRPC, in octal, e.g.
	// "0660": the processes allowed to connect are those that may write the file.
	// Only with a "unix:" GRPC. Default "0660".
	SocketMode string `yaml:"socket_mode"`
	// TLS serves GRPC over TLS, or mutual TLS with ClientCAFile. Only with a TCP
	// GRPC. Default: none (plaintext).
	TLS *TLS `yaml:"tls"`
	// Admin serves /metrics, /healthz, /readyz, the status page and the key API.
	// Default ":9002": probes and scrapers reach it from other hosts; it never shows a
	// key value, and the key API needs the admin token.
	Admin string `yaml:"admin"`
	// MaxConcurrentStreams is the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS of each
	// connection to GRPC; Envoy's connection pool opens another connection past it.
	// Default 1024.
	MaxConcurrentStreams uint32 `yaml:"max_concurrent_streams"`
	// MaxMessageBytes is the largest gRPC message the server accepts or sends. An
	// ext_proc message carries one header map (Envoy caps it at 60 KiB by default) or,
	// for a failed attempt, a small error body. Default 4194304 (4 MiB).
	MaxMessageBytes int `yaml:"max_message_bytes"`
}

// TLS configures TLS on the ext_proc listener. The files are read at start and again
// whenever one of them changes, so certificates rotate without a restart.
type TLS struct {
	// CertFile is the server's PEM certificate chain. Required.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of CertFile. Required.
	KeyFile string `yaml:"key_file"`
	// ClientCAFile holds the PEM CA certificates that sign the clients' (Envoy's)
	// certificates. When set, the server requires a client certificate and verifies
	// it: mutual TLS. Default: none (server-side TLS only).
	ClientCAFile string `yaml:"client_ca_file"`
}

// Shutdown says how the server stops on SIGTERM.
type Shutdown struct {
	// DrainDelay is how long the server keeps accepting new streams after SIGTERM
	// while reporting NOT_SERVING (gRPC health) and 503 (/readyz), so that Envoy's
	// health checks take the replica out before it stops listening. A NOT_SERVING
	// answer takes a host out on the first check (Envoy's
	// source/extensions/health_checkers/common/health_checker_base_impl.cc
	// setUnhealthy), so it must exceed the health check's interval plus its jitter and
	// timeout: 5s + 0 + 1s in the generated configuration. 0s stops listening at once
	// (for a single replica, or tests). Default 10s.
	DrainDelay *Duration `yaml:"drain_delay"`
	// Timeout bounds the graceful stop that follows the drain delay: streams still
	// open after it are cut. Default 30s.
	Timeout Duration `yaml:"timeout"`
}

// UnixPrefix starts a Listen.GRPC that names a Unix domain socket.
const UnixPrefix = "unix:"

// Defaults of Listen and Shutdown.
const (
	DefaultGRPCAddress          = "127.0.0.1:9001"
	DefaultAdminAddress         = ":9002"
	DefaultSocketMode           = "0660"
	DefaultMaxConcurrentStreams = 1024
	DefaultMaxMessageBytes      = 4 << 20
	DefaultDrainDelay           = 10 * time.Second
	DefaultShutdownTimeout      = 30 * time.Second
)

func (l *Listen) applyDefaults() {
	setDefault(&l.GRPC, DefaultGRPCAddress)
	setDefault(&l.Admin, DefaultAdminAddress)
	if l.IsUnix() {
		setDefault(&l.SocketMode, DefaultSocketMode)
	}
	setDefault(&l.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
	setDefault(&l.MaxMessageBytes, DefaultMaxMessageBytes)
}

func (s *Shutdown) applyDefaults() {
	if s.DrainDelay == nil {
		d := Duration(DefaultDrainDelay)
		s.DrainDelay = &d
	}
	setDefault(&s.Timeout, Duration(DefaultShutdownTimeout))
}

// Drain is DrainDelay, or its default when the file leaves it out.
func (s *Shutdown) Drain() time.Duration {
	if s.DrainDelay == nil {
		return DefaultDrainDelay
	}
	return s.DrainDelay.Std()
}

// IsUnix reports whether GRPC names a Unix domain socket.
func (l *Listen) IsUnix() bool { return strings.HasPrefix(l.GRPC, UnixPrefix) }

// SocketPath is the path of GRPC's Unix domain socket ("" for TCP). Both of gRPC's
// spellings are accepted: "unix:/abs/path" and "unix:///abs/path".
func (l *Listen) SocketPath() string {
	p, _ := KeypoolSocketPath(l.GRPC) // the same two spellings as envoy.keypool_addresses
	return p
}

// SocketFileMode is SocketMode parsed; only meaningful for a Unix GRPC.
func (l *Listen) SocketFileMode() os.FileMode {
	m, _ := strconv.ParseUint(l.SocketMode, 8, 32)
	return os.FileMode(m)
}

// MutualTLS reports whether the ext_proc listener requires verified client
// certificates.
func (l *Listen) MutualTLS() bool { return l.TLS != nil && l.TLS.ClientCAFile != "" }

// Exposed reports whether the ext_proc listener can be reached from other hosts
// without a verified client certificate, and why: anyone who reaches it can open an
// ext_proc stream and read a key from the answer. A loopback address, mutual TLS and
// a Unix socket that not every local user may write are not exposed.
func (l *Listen) Exposed() (bool, string) {
	if l.IsUnix() {
		if l.SocketFileMode()&0o002 != 0 {
			return true, fmt.Sprintf("listen.socket_mode %s lets every local user open ext_proc streams on %s "+
				"and read API keys; use 0660 and put Envoy in the socket's group", l.SocketMode, l.SocketPath())
		}
		return false, ""
	}
	if l.MutualTLS() {
		return false, ""
	}
	host, _, err := net.SplitHostPort(l.GRPC)
	if err != nil {
		return false, "" // reported by validate
	}
	if host == "localhost" {
		return false, ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return false, ""
	}
	how := "plaintext"
	if l.TLS != nil {
		how = "TLS without client certificates"
	}
	where := host
	if host == "" || host == "0.0.0.0" || host == "::" {
		where = "every interface"
	}
	return true, fmt.Sprintf("listen.grpc %s accepts ext_proc streams on %s over %s: any client that reaches it "+
		"can read API keys; use mutual TLS (listen.tls.client_ca_file), a Unix socket, or a loopback address",
		l.GRPC, where, how)
}

func (l *Listen) validate(path string) []error {
	var errs []error
	add := func(field string, err error) { errs = append(errs, fieldError(path+"."+field, err)) }
	if l.IsUnix() {
		p := l.SocketPath()
		switch {
		case !filepath.IsAbs(p):
			add("grpc", fmt.Errorf("%q: the socket path must be absolute (unix:/run/envoy-keypool/extproc.sock)", l.GRPC))
		case len(p) > 107:
			// sun_path holds 108 bytes on Linux, the terminating NUL included.
			add("grpc", fmt.Errorf("socket path is %d bytes, longer than the 107 a Unix socket address holds", len(p)))
		}
		if m, err := strconv.ParseUint(l.SocketMode, 8, 32); err != nil || m > 0o777 {
			add("socket_mode", fmt.Errorf("%q is not an octal file mode such as \"0660\"", l.SocketMode))
		} else if m&0o200 == 0 {
			add("socket_mode", fmt.Errorf("%q: the owner needs write permission to connect", l.SocketMode))
		}
		if l.TLS != nil {
			add("tls", errors.New("TLS is for a TCP listen.grpc; a Unix socket is guarded by its file mode"))
		}
	} else {
		if _, port, err := net.SplitHostPort(l.GRPC); err != nil {
			add("grpc", fmt.Errorf("%q is neither host:port nor unix:/path: %w", l.GRPC, err))
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			add("grpc", fmt.Errorf("%q: port %q is not a number", l.GRPC, port))
		}
		if l.SocketMode != "" {
			add("socket_mode", errors.New("only with a unix: listen.grpc"))
		}
	}
	if l.TLS != nil {
		errs = append(errs, l.TLS.validate(path+".tls")...)
	}
	if _, port, err := net.SplitHostPort(l.Admin); err != nil {
		add("admin", fmt.Errorf("%q is not host:port: %w", l.Admin, err))
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		add("admin", fmt.Errorf("%q: port %q is not a number", l.Admin, port))
	}
	if l.GRPC == l.Admin && !strings.HasSuffix(l.GRPC, ":0") {
		add("admin", fmt.Errorf("same address as listen.grpc (%s)", l.GRPC))
	}
	if l.MaxConcurrentStreams < 16 {
		add("max_concurrent_streams", fmt.Errorf("%d is below 16: Envoy would open a connection for every few attempts", l.MaxConcurrentStreams))
	}
	if l.MaxMessageBytes < 64<<10 {
		add("max_message_bytes", fmt.Errorf("%d is below 64 KiB: Envoy's default header map alone can reach 60 KiB", l.MaxMessageBytes))
	}
	return errs
}

func (t *TLS) validate(path string) []error {
	var errs []error
	for field, v := range map[string]string{"cert_file": t.CertFile, "key_file": t.KeyFile} {
		if v == "" {
			errs = append(errs, fieldError(path+"."+field, errors.New("missing")))
		}
	}
	for field, v := range map[string]string{"cert_file": t.CertFile, "key_file": t.KeyFile, "client_ca_file": t.ClientCAFile} {
		if v != "" && !filepath.IsAbs(v) {
			errs = append(errs, fieldError(path+"."+field, fmt.Errorf("%q is not an absolute path", v)))
		}
	}
	return errs
}

func (s *Shutdown) validate(path string) []error {
	var errs []error
	if d := s.Drain(); d < 0 {
		errs = append(errs, fieldError(path+".drain_delay", fmt.Errorf("%s is negative", d)))
	}
	if d := s.Timeout.Std(); d <= 0 {
		errs = append(errs, fieldError(path+".timeout", fmt.Errorf("%s is not positive", d)))
	}
	return errs
}
