package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Envoy holds what envoy-keypool and the Envoy configuration must agree on, and what
// `envoy-keypool envoy-config` needs to generate that configuration.
type Envoy struct {
	// PoolMetadataKey is the gRPC initial metadata key through which the ext_proc
	// filter of a provider cluster names its pool. Default "x-keypool-pool".
	PoolMetadataKey string `yaml:"pool_metadata_key"`
	// RequestIDHeader correlates the attempts of one request. Default "x-request-id".
	RequestIDHeader string `yaml:"request_id_header"`
	// AttemptCountHeader numbers the attempts (Envoy's include_request_attempt_count).
	// Default "x-envoy-attempt-count".
	AttemptCountHeader string `yaml:"attempt_count_header"`
	// RetryMarkerHeader is added to a response whose key failed, for the retry
	// policy's retriable_headers. Default "x-keypool-retry".
	RetryMarkerHeader string `yaml:"retry_marker_header"`

	// Listen is the address of Envoy's listener in the generated configuration.
	// Default "0.0.0.0:10000".
	Listen string `yaml:"listen"`
	// KeypoolAddresses are the envoy-keypool replicas Envoy's ext_proc cluster reaches:
	// "host:port" (each name resolved by DNS, every address an endpoint) or
	// "unix:/path/to.sock" (also "unix:///path/to.sock", as listen.grpc takes it: a Unix
	// domain socket, Envoy's pipe address, for a sidecar sharing a volume with Envoy).
	// Not both kinds at once. Default ["127.0.0.1:9001"].
	KeypoolAddresses []string `yaml:"keypool_addresses"`
	// KeypoolTLS makes Envoy reach envoy-keypool over TLS (mutual TLS with CertFile and
	// KeyFile). Needed when envoy-keypool's ext_proc listener has TLS. Default: none
	// (plaintext, for loopback, a Unix socket or a trusted network).
	KeypoolTLS *KeypoolTLS `yaml:"keypool_tls"`
	// AdminAddress is Envoy's admin interface (stats, /ready). Keep it on loopback: it
	// can also stop Envoy and dump its configuration. Default "127.0.0.1:9901".
	AdminAddress string `yaml:"admin_address"`
	// RouteTimeout bounds one client request through Envoy, all its attempts included,
	// from the end of the request body to the end of the response (RouteAction.timeout);
	// it is also the connection manager's stream_idle_timeout, since a non-streamed
	// completion sends nothing until the model is done. Envoy's defaults (15s, 5m idle)
	// would cut long generations. Default 10m, the official SDKs' own client timeout.
	RouteTimeout Duration `yaml:"route_timeout"`
	// RequestBodyBufferLimit is how many bytes of a request body Envoy keeps to replay it
	// on a retry with the next key (Route.request_body_buffer_limit). A request with a
	// larger body is still proxied, but never retried: its key failure reaches the
	// client. Default 33554432 (32 MiB, the largest request Anthropic's Messages API
	// accepts; it covers OpenAI requests with inline images).
	RequestBodyBufferLimit int64 `yaml:"request_body_buffer_limit"`
	// ClassifyErrorBodies lets envoy-keypool read the error body of a failure (an
	// answer with a failure status and a small body) before it decides: quota or rate
	// limit, Gemini's bad key, the retry delay in the body. The generated ext_proc
	// filters then allow it to switch the response body to BUFFERED for that answer
	// (allow_mode_override), and envoy-keypool asks for it; successful and streamed
	// responses are never held. Set it to false when the Envoy configuration is not
	// generated and its ext_proc filter has no allow_mode_override: envoy-keypool then
	// decides on headers alone (an override Envoy ignores would let the failure reach
	// the client without failover). Default true.
	ClassifyErrorBodies *bool `yaml:"classify_error_bodies"`
	// CAFile is the CA bundle Envoy verifies https upstreams with (inside Envoy's
	// container or host). Default "/etc/ssl/certs/ca-certificates.crt" (Debian and
	// Ubuntu, the envoyproxy/envoy image included).
	CAFile string `yaml:"ca_file"`
}

// KeypoolTLS is the client side, in Envoy, of TLS to envoy-keypool. The files are
// paths as Envoy sees them (inside its container or host), not envoy-keypool's.
type KeypoolTLS struct {
	// CAFile is the CA bundle that signed envoy-keypool's server certificate. Required.
	CAFile string `yaml:"ca_file"`
	// ServerName is the name Envoy sends as SNI and checks as a DNS subject alternative
	// name of envoy-keypool's certificate (one name for every replica). Required.
	ServerName string `yaml:"server_name"`
	// CertFile and KeyFile are Envoy's client certificate and key, for mutual TLS.
	// Both or neither. Default: none (envoy-keypool's listener then needs no client
	// certificate).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Route is a pool's route in the generated Envoy configuration.
type Route struct {
	// Prefix is the path prefix routed to the pool's provider; it is replaced by "/"
	// upstream. Default "/<pool name>/".
	Prefix string `yaml:"prefix"`
	// Upstream is the provider's base URL. Default: the provider's public API
	// (https://api.openai.com, https://api.anthropic.com).
	Upstream string `yaml:"upstream"`
	// IdleTimeout closes a connection to the provider that carried no request for this
	// long (HttpProtocolOptions.common_http_protocol_options.idle_timeout). It must be
	// shorter than the provider's own keep-alive timeout, or Envoy may send a request
	// on a connection the provider is closing and the client gets the reset. Default
	// 60s: below Cloudflare's 400 s (OpenAI, Anthropic), the Google Front End's 610 s
	// (Gemini) and Azure's 4 min load balancer idle timeout; Envoy's own default is 1 h.
	// Set it below a self-hosted server's keep-alive (uvicorn, which serves vLLM,
	// closes idle connections after 5 s).
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MaxConcurrentRequests is how many requests to this provider one Envoy carries at
	// once; past it Envoy answers 503 at once. It sizes the provider cluster's circuit
	// breakers and, summed over the pools, the envoy-keypool cluster's (see envoy/doc.go).
	// Default 1024, Envoy's own default.
	MaxConcurrentRequests int `yaml:"max_concurrent_requests"`
}

// Defaults of Route's Envoy settings, applied by the generator when the field is zero
// (Route.applyDefaults sets the provider-specific ones).
const (
	DefaultRouteIdleTimeout           = 60 * time.Second
	DefaultRouteMaxConcurrentRequests = 1024
)

// EffectiveIdleTimeout is IdleTimeout, or its default when unset.
func (r *Route) EffectiveIdleTimeout() time.Duration {
	if r.IdleTimeout == 0 {
		return DefaultRouteIdleTimeout
	}
	return r.IdleTimeout.Std()
}

// EffectiveMaxConcurrentRequests is MaxConcurrentRequests, or its default when unset.
func (r *Route) EffectiveMaxConcurrentRequests() int {
	if r.MaxConcurrentRequests == 0 {
		return DefaultRouteMaxConcurrentRequests
	}
	return r.MaxConcurrentRequests
}

func (e *Envoy) applyDefaults() {
	setDefault(&e.PoolMetadataKey, "x-keypool-pool")
	setDefault(&e.RequestIDHeader, "x-request-id")
	setDefault(&e.AttemptCountHeader, "x-envoy-attempt-count")
	setDefault(&e.RetryMarkerHeader, "x-keypool-retry")
	setDefault(&e.Listen, "0.0.0.0:10000")
	if len(e.KeypoolAddresses) == 0 {
		e.KeypoolAddresses = []string{"127.0.0.1:9001"}
	}
	setDefault(&e.AdminAddress, "127.0.0.1:9901")
	setDefault(&e.RouteTimeout, Duration(10*time.Minute))
	setDefault(&e.RequestBodyBufferLimit, 32<<20)
	setDefault(&e.CAFile, "/etc/ssl/certs/ca-certificates.crt")
	if e.ClassifyErrorBodies == nil {
		on := true
		e.ClassifyErrorBodies = &on
	}
}

// ClassifiesErrorBodies is ClassifyErrorBodies, true when unset.
func (e *Envoy) ClassifiesErrorBodies() bool {
	return e.ClassifyErrorBodies == nil || *e.ClassifyErrorBodies
}

func (e *Envoy) validate(path string) []error {
	var errs []error
	for field, v := range map[string]string{
		"pool_metadata_key":    e.PoolMetadataKey,
		"request_id_header":    e.RequestIDHeader,
		"attempt_count_header": e.AttemptCountHeader,
		"retry_marker_header":  e.RetryMarkerHeader,
	} {
		if v != strings.ToLower(v) || strings.ContainsAny(v, " :\t") {
			errs = append(errs, fieldError(path+"."+field, fmt.Errorf("%q must be a lower-case header name", v)))
		}
	}
	if strings.HasPrefix(e.RetryMarkerHeader, "x-envoy-") {
		errs = append(errs, fieldError(path+".retry_marker_header",
			errors.New("x-envoy-* headers may not be set by ext_proc under Envoy's default mutation rules")))
	}
	if _, _, err := net.SplitHostPort(e.Listen); err != nil {
		errs = append(errs, fieldError(path+".listen", err))
	}
	pipes := 0
	for i, a := range e.KeypoolAddresses {
		field := fmt.Sprintf("%s.keypool_addresses[%d]", path, i)
		if sock, ok := KeypoolSocketPath(a); ok {
			pipes++
			if !strings.HasPrefix(sock, "/") {
				errs = append(errs, fieldError(field, fmt.Errorf("%q: want unix:/absolute/path", a)))
			}
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fieldError(field, err))
		}
	}
	if pipes > 0 && pipes < len(e.KeypoolAddresses) {
		errs = append(errs, fieldError(path+".keypool_addresses",
			errors.New("mixes unix: sockets and host:port addresses: one Envoy cluster reaches either kind, not both")))
	}
	if t := e.KeypoolTLS; t != nil {
		errs = append(errs, t.validate(path+".keypool_tls")...)
	}
	if _, _, err := net.SplitHostPort(e.AdminAddress); err != nil {
		errs = append(errs, fieldError(path+".admin_address", err))
	}
	if e.RouteTimeout.Std() < time.Second {
		errs = append(errs, fieldError(path+".route_timeout", fmt.Errorf("%s is shorter than 1s", e.RouteTimeout.Std())))
	}
	if e.RequestBodyBufferLimit < 1<<16 {
		errs = append(errs, fieldError(path+".request_body_buffer_limit",
			fmt.Errorf("%d bytes is below 64 KiB: most requests could not be retried with the next key", e.RequestBodyBufferLimit)))
	}
	if !strings.HasPrefix(e.CAFile, "/") {
		errs = append(errs, fieldError(path+".ca_file", fmt.Errorf("%q is not an absolute path", e.CAFile)))
	}
	return errs
}

// KeypoolSocketPath is the socket path of a "unix:" entry of KeypoolAddresses, in
// either of gRPC's spellings ("unix:/p", "unix:///p"); ok is false for host:port.
func KeypoolSocketPath(addr string) (path string, ok bool) {
	p, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return "", false
	}
	if rest, abs := strings.CutPrefix(p, "//"); abs {
		p = rest
	}
	return p, true
}

func (t *KeypoolTLS) validate(path string) []error {
	var errs []error
	for field, v := range map[string]string{"ca_file": t.CAFile, "cert_file": t.CertFile, "key_file": t.KeyFile} {
		if v != "" && !strings.HasPrefix(v, "/") {
			errs = append(errs, fieldError(path+"."+field, fmt.Errorf("%q is not an absolute path", v)))
		}
	}
	if t.CAFile == "" {
		errs = append(errs, fieldError(path+".ca_file", errors.New("required: the CA that signed envoy-keypool's certificate")))
	}
	if t.ServerName == "" || strings.ContainsAny(t.ServerName, " /:") {
		errs = append(errs, fieldError(path+".server_name", fmt.Errorf("%q: want the DNS name in envoy-keypool's certificate", t.ServerName)))
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, fieldError(path, errors.New("cert_file and key_file go together (mutual TLS) or not at all")))
	}
	return errs
}

func (r *Route) applyDefaults(p *Pool) {
	setDefault(&r.Prefix, "/"+p.Name+"/")
	// The provider's public API (an Azure pool's resource host, a preset's API); none
	// for self-hosted servers, reported by the pool's provider validation.
	setDefault(&r.Upstream, p.defaultUpstream())
}

func (r *Route) validate(path string) []error {
	var errs []error
	if !strings.HasPrefix(r.Prefix, "/") || !strings.HasSuffix(r.Prefix, "/") {
		errs = append(errs, fieldError(path+".prefix", fmt.Errorf("%q must start and end with /", r.Prefix)))
	}
	u, err := url.Parse(r.Upstream)
	switch {
	case r.Upstream == "":
		// Required only when the provider has no default: Pool.validateProvider says so.
	case err != nil:
		errs = append(errs, fieldError(path+".upstream", err))
	case u.Scheme != "http" && u.Scheme != "https":
		errs = append(errs, fieldError(path+".upstream", fmt.Errorf("%q: scheme must be http or https", r.Upstream)))
	case u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
		errs = append(errs, fieldError(path+".upstream", fmt.Errorf("%q must be a bare scheme://host[:port]", r.Upstream)))
	}
	if r.IdleTimeout < 0 || (r.IdleTimeout > 0 && r.IdleTimeout.Std() < time.Second) {
		errs = append(errs, fieldError(path+".idle_timeout", fmt.Errorf("%s: want at least 1s", r.IdleTimeout.Std())))
	}
	if r.MaxConcurrentRequests < 0 || r.MaxConcurrentRequests > 1<<20 {
		errs = append(errs, fieldError(path+".max_concurrent_requests", fmt.Errorf("%d: want 1 to %d", r.MaxConcurrentRequests, 1<<20)))
	}
	return errs
}
