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
	// KeypoolAddresses are the envoy-keypool replicas ("host:port") Envoy's ext_proc
	// cluster reaches. Default ["127.0.0.1:9001"].
	KeypoolAddresses []string `yaml:"keypool_addresses"`
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
	// CAFile is the CA bundle Envoy verifies https upstreams with (inside Envoy's
	// container or host). Default "/etc/ssl/certs/ca-certificates.crt" (Debian and
	// Ubuntu, the envoyproxy/envoy image included).
	CAFile string `yaml:"ca_file"`
}

// Route is a pool's route in the generated Envoy configuration.
type Route struct {
	// Prefix is the path prefix routed to the pool's provider; it is replaced by "/"
	// upstream. Default "/<pool name>/".
	Prefix string `yaml:"prefix"`
	// Upstream is the provider's base URL. Default: the provider's public API
	// (https://api.openai.com, https://api.anthropic.com).
	Upstream string `yaml:"upstream"`
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
	for i, a := range e.KeypoolAddresses {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fieldError(fmt.Sprintf("%s.keypool_addresses[%d]", path, i), err))
		}
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
	return errs
}
