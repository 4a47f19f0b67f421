package standin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// upstreamCluster is a cluster at run time: its hosts, load balancer, health and
// retry accounting.
type upstreamCluster struct {
	cfg   *clusterConfig
	hosts []*host
	rr    atomic.Uint64

	// hadTraffic flips on the first stream or request, which moves health checks from
	// no_traffic_interval to interval; trafficStarted is closed at that moment.
	hadTraffic     atomic.Bool
	trafficOnce    sync.Once
	trafficStarted chan struct{}

	activeRequests atomic.Int64 // upstream attempts in flight, for retry_budget

	mu            sync.Mutex // protects activeRetries
	activeRetries int

	transport *http.Transport // HTTP clusters
}

// host is one endpoint.
type host struct {
	cfg     endpointConfig
	addr    string // where the stand-in dials (Options.Endpoints may override)
	healthy atomic.Bool

	connMu sync.Mutex // protects the fields below
	conn   *grpc.ClientConn
	hcConn *grpc.ClientConn
}

func newUpstreamCluster(cfg *clusterConfig, opts Options) *upstreamCluster {
	c := &upstreamCluster{cfg: cfg, trafficStarted: make(chan struct{})}
	eps := cfg.endpoints
	if over, ok := opts.Endpoints[cfg.name]; ok {
		eps = nil
		for _, a := range over {
			hostname, _, err := net.SplitHostPort(a)
			if err != nil {
				hostname = a
			}
			eps = append(eps, endpointConfig{address: a, hostname: hostname})
		}
		// auto_host_rewrite keeps naming the configured host, not the test server.
		if len(cfg.endpoints) > 0 {
			for i := range eps {
				eps[i].hostname = cfg.endpoints[i%len(cfg.endpoints)].hostname
			}
		}
	}
	for _, e := range eps {
		h := &host{cfg: e, addr: e.address}
		// With active health checking Envoy starts a host as failed until its first
		// check passes (FAILED_ACTIVE_HC); without, every host is healthy.
		h.healthy.Store(cfg.health == nil)
		c.hosts = append(c.hosts, h)
	}
	return c
}

func (c *upstreamCluster) markTraffic() {
	c.hadTraffic.Store(true)
	c.trafficOnce.Do(func() { close(c.trafficStarted) })
}

// pick chooses the next host round-robin among the healthy ones. When the healthy
// share falls below healthy_panic_threshold (50% by default) Envoy's load balancer
// panics and uses every host, healthy or not; the stand-in does the same.
func (c *upstreamCluster) pick() *host {
	var healthy []*host
	for _, h := range c.hosts {
		if h.healthy.Load() {
			healthy = append(healthy, h)
		}
	}
	candidates := healthy
	if len(c.hosts) > 0 && float64(len(healthy))*100/float64(len(c.hosts)) < c.cfg.panicPct {
		candidates = c.hosts
	}
	if len(candidates) == 0 {
		return nil
	}
	n := c.rr.Add(1) - 1
	return candidates[n%uint64(len(candidates))]
}

// tryStartRetry is the retries resource of the cluster's circuit breaker
// (ResourceManager::retries().canCreate()): at most max_retries retries in flight,
// or with a retry_budget max(min_retry_concurrency, budget_percent of active requests).
func (c *upstreamCluster) tryStartRetry() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	limit := int(c.cfg.maxRetries)
	if b := c.cfg.budget; b != nil {
		limit = int(float64(c.activeRequests.Load()) * b.percent / 100)
		if limit < int(b.minConcurrency) {
			limit = int(b.minConcurrency)
		}
	}
	if c.activeRetries >= limit {
		return false
	}
	c.activeRetries++
	return true
}

func (c *upstreamCluster) endRetry() {
	c.mu.Lock()
	c.activeRetries--
	c.mu.Unlock()
}

// grpcConn returns the host's gRPC connection for ext_proc streams. Envoy sets the
// :authority of envoy_grpc calls to the authority field or else the cluster name.
func (c *upstreamCluster) grpcConn(h *host, opts Options, authority string) (*grpc.ClientConn, error) {
	h.connMu.Lock()
	defer h.connMu.Unlock()
	if h.conn != nil {
		return h.conn, nil
	}
	if authority == "" {
		authority = c.cfg.name
	}
	conn, err := grpc.NewClient("passthrough:///"+h.addr, c.grpcDialOptions(opts, authority)...)
	if err != nil {
		return nil, fmt.Errorf("grpc client for %s: %w", h.addr, err)
	}
	h.conn = conn
	return conn, nil
}

// healthConn is a separate connection for health checks, as Envoy's checker uses its
// own connections.
func (c *upstreamCluster) healthConn(h *host, opts Options) (*grpc.ClientConn, error) {
	h.connMu.Lock()
	defer h.connMu.Unlock()
	if h.hcConn != nil {
		return h.hcConn, nil
	}
	authority := c.cfg.health.authority
	if authority == "" {
		authority = c.cfg.name
	}
	conn, err := grpc.NewClient("passthrough:///"+h.addr, c.grpcDialOptions(opts, authority)...)
	if err != nil {
		return nil, fmt.Errorf("health-check client for %s: %w", h.addr, err)
	}
	h.hcConn = conn
	return conn, nil
}

func (c *upstreamCluster) grpcDialOptions(opts Options, authority string) []grpc.DialOption {
	creds := insecure.NewCredentials()
	if t := c.cfg.tls; t != nil {
		creds = credentials.NewTLS(t.clientConfig(t.sni, opts.RootCAs, []string{"h2"}))
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithAuthority(authority),
		// Reconnect quickly: Envoy's pools retry a failed connection on the next stream
		// rather than backing off for seconds as gRPC-Go does by default.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: time.Second},
			MinConnectTimeout: c.cfg.connectTimeout,
		}),
	}
}

func (c *upstreamCluster) close() {
	for _, h := range c.hosts {
		h.connMu.Lock()
		if h.conn != nil {
			_ = h.conn.Close()
		}
		if h.hcConn != nil {
			_ = h.hcConn.Close()
		}
		h.connMu.Unlock()
	}
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
}

// connectError marks a failure to establish the upstream connection, which Envoy
// reports as a connection-failure reset (retry_on connect-failure).
type connectError struct{ err error }

func (e *connectError) Error() string { return "upstream connect error: " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

type sniKey struct{}

// newTransport builds the HTTP transport of a provider cluster: its connect timeout,
// TLS with SNI, and HTTP/1.1 or HTTP/2 as the cluster's protocol options say.
func (c *upstreamCluster) newTransport(opts Options) {
	dialer := &net.Dialer{Timeout: c.cfg.connectTimeout}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &connectError{err: err}
			}
			return conn, nil
		},
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       time.Hour,
		ResponseHeaderTimeout: 0,
		DisableCompression:    true,
	}
	protos := new(http.Protocols)
	t := c.cfg.tls
	switch {
	case t != nil:
		alpn := t.alpn
		switch {
		case c.cfg.http2:
			protos.SetHTTP2(true)
			if len(alpn) == 0 {
				alpn = []string{"h2"}
			}
		case c.cfg.autoHTTP:
			protos.SetHTTP1(true)
			protos.SetHTTP2(true)
			if len(alpn) == 0 {
				alpn = []string{"h2", "http/1.1"}
			}
		default:
			protos.SetHTTP1(true)
			if len(alpn) == 0 {
				alpn = []string{"http/1.1"}
			}
		}
		tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			raw, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &connectError{err: err}
			}
			sni := t.sni
			if v, ok := ctx.Value(sniKey{}).(string); ok && (t.autoSNI || c.cfg.autoSNI) && v != "" {
				sni = v
			}
			conn := tls.Client(raw, t.clientConfig(sni, opts.RootCAs, alpn))
			if err := conn.HandshakeContext(ctx); err != nil {
				_ = raw.Close()
				return nil, &connectError{err: err}
			}
			return conn, nil
		}
	case c.cfg.http2:
		protos.SetUnencryptedHTTP2(true)
	default:
		protos.SetHTTP1(true)
	}
	tr.Protocols = protos
	c.transport = tr
}

var errNoHealthyUpstream = errors.New("no healthy upstream")
