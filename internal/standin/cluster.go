package standin

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
)

// upstreamCluster is a cluster at run time: its hosts, load balancer, health and
// circuit breakers.
type upstreamCluster struct {
	p     *Proxy
	cfg   *clusterConfig
	hosts []*host
	rr    atomic.Uint64
	res   *resources

	// hadTraffic flips on the first stream or request, which moves health checks from
	// no_traffic_interval to interval; trafficStarted is closed at that moment.
	hadTraffic     atomic.Bool
	trafficOnce    sync.Once
	trafficStarted chan struct{}

	transport *http.Transport // dials the connections of every pool of the cluster
}

// host is one endpoint.
type host struct {
	cfg     endpointConfig
	network string // "tcp" or "unix"
	addr    string // where the stand-in dials (Options.Endpoints may override)
	healthy atomic.Bool

	mu     sync.Mutex // protects the fields below
	pools  map[string]*connPool
	hcPool *connPool
}

func newUpstreamCluster(p *Proxy, cfg *clusterConfig) *upstreamCluster {
	c := &upstreamCluster{p: p, cfg: cfg, trafficStarted: make(chan struct{}), res: &resources{limits: cfg.limits}}
	eps := cfg.endpoints
	if over, ok := p.opts.Endpoints[cfg.name]; ok {
		eps = nil
		for _, a := range over {
			eps = append(eps, endpointOverride(a))
		}
		// auto_host_rewrite keeps naming the configured host, not the test server.
		if len(cfg.endpoints) > 0 {
			for i := range eps {
				eps[i].hostname = cfg.endpoints[i%len(cfg.endpoints)].hostname
			}
		}
	}
	for _, e := range eps {
		h := &host{cfg: e, network: e.network, addr: e.address, pools: map[string]*connPool{}}
		// With active health checking Envoy starts a host as failed until its first
		// check passes (FAILED_ACTIVE_HC); without, every host is healthy.
		h.healthy.Store(cfg.health == nil)
		c.hosts = append(c.hosts, h)
	}
	c.transport = c.newTransport()
	return c
}

// endpointOverride reads an Options.Endpoints entry: "host:port", or "unix:PATH" for
// a Unix domain socket (an Envoy pipe address).
func endpointOverride(a string) endpointConfig {
	if path, ok := cutPrefix(a, "unix:"); ok {
		return endpointConfig{network: "unix", address: path, hostname: path}
	}
	hostname, _, err := net.SplitHostPort(a)
	if err != nil {
		hostname = a
	}
	return endpointConfig{network: "tcp", address: a, hostname: hostname}
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return s, false
}

func (c *upstreamCluster) markTraffic() {
	c.hadTraffic.Store(true)
	c.trafficOnce.Do(func() { close(c.trafficStarted) })
}

// pick chooses the next host round-robin among the healthy ones. When the healthy
// share falls below healthy_panic_threshold (50% by default) Envoy's load balancer
// panics and uses every host, healthy or not; the stand-in does the same.
func (c *upstreamCluster) pick() *host {
	return c.pickAvoiding(nil, 0)
}

// pickAvoiding is pick with the previous_hosts retry host predicate
// (extensions/retry/host/previous_hosts): up to maxAttempts extra picks try to avoid a
// host in tried (RetryStateImpl::shouldSelectAnotherHost,
// host_selection_retry_max_attempts).
func (c *upstreamCluster) pickAvoiding(tried []*host, maxAttempts int) *host {
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
	var h *host
	for i := 0; i <= maxAttempts; i++ {
		n := c.rr.Add(1) - 1
		h = candidates[n%uint64(len(candidates))]
		if !slices.Contains(tried, h) {
			break
		}
	}
	return h
}

// pool returns h's connection pool for one SNI (Envoy keys pools by the transport
// socket options, which include the SNI).
func (c *upstreamCluster) pool(h *host, sni string) *connPool {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.pools[sni]
	if !ok {
		p = &connPool{c: c, res: c.res, h: h, sni: sni, http2: c.cfg.http2}
		h.pools[sni] = p
	}
	return p
}

// healthPool is the health checker's own connection to h: health checks do not go
// through the cluster's connection pools nor count against its circuit breakers.
func (c *upstreamCluster) healthPool(h *host) *connPool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hcPool == nil {
		unlimited := thresholds{maxConnections: 1 << 30, maxPending: 1 << 30, maxRequests: 1 << 30}
		h.hcPool = &connPool{c: c, res: &resources{limits: unlimited}, h: h, sni: c.sniFor(""), http2: true}
	}
	return h.hcPool
}

func (c *upstreamCluster) close() {
	for _, h := range c.hosts {
		h.mu.Lock()
		pools := make([]*connPool, 0, len(h.pools))
		for _, p := range h.pools {
			pools = append(pools, p)
		}
		if h.hcPool != nil {
			pools = append(pools, h.hcPool)
		}
		h.mu.Unlock()
		for _, p := range pools {
			p.close()
		}
	}
}

// dialTarget travels in the dial context to the transport's dial functions.
type dialTarget struct {
	h   *host
	sni string
	h2  bool // set by the TLS dial when ALPN chose HTTP/2
}

type dialTargetKey struct{}

// dial opens one connection to h: TCP or a Unix socket, TLS with the cluster's
// transport socket and sni when it has one, HTTP/1.1 or HTTP/2 as the cluster's
// protocol options (or ALPN, with auto_config) say. connect_timeout covers the TCP
// connect and the TLS handshake, as Envoy's connect timer runs until the transport
// socket reports Connected.
func (c *upstreamCluster) dial(h *host, sni string) (*http.ClientConn, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.connectTimeout)
	defer cancel()
	target := &dialTarget{h: h, sni: sni}
	ctx = context.WithValue(ctx, dialTargetKey{}, target)
	scheme := "http"
	if c.cfg.tls != nil {
		scheme = "https"
	}
	// The address only names the connection for net/http; the dial functions use h.
	addr := h.addr
	if h.network == "unix" {
		addr = "unix-socket:0"
	}
	cc, err := c.transport.NewClientConn(ctx, scheme, addr)
	if err != nil {
		c.p.logf("cluster %s: connect to %s failed: %v", c.cfg.name, h.addr, err)
		return nil, false, err
	}
	h2 := target.h2 || (c.cfg.tls == nil && c.cfg.http2)
	return cc, h2, nil
}

// newTransport builds the dialer of the cluster's connections.
func (c *upstreamCluster) newTransport() *http.Transport {
	dialer := &net.Dialer{}
	dialRaw := func(ctx context.Context) (net.Conn, error) {
		t := ctx.Value(dialTargetKey{}).(*dialTarget)
		return dialer.DialContext(ctx, t.h.network, t.h.addr)
	}
	tr := &http.Transport{
		DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return dialRaw(ctx) },
		DisableCompression: true,
	}
	if ka := c.cfg.keepalive; ka != nil && ka.interval > 0 {
		// Envoy pings every interval; net/http pings after interval without a frame
		// received, which finds a dead connection as fast on an idle one.
		tr.HTTP2 = &http.HTTP2Config{SendPingTimeout: ka.interval, PingTimeout: ka.timeout}
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
		tr.DialTLSContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			raw, err := dialRaw(ctx)
			if err != nil {
				return nil, err
			}
			target := ctx.Value(dialTargetKey{}).(*dialTarget)
			conn := tls.Client(raw, t.clientConfig(target.sni, c.p.opts.RootCAs, alpn))
			if err := conn.HandshakeContext(ctx); err != nil {
				_ = raw.Close()
				return nil, err
			}
			target.h2 = conn.ConnectionState().NegotiatedProtocol == "h2"
			return conn, nil
		}
	case c.cfg.http2:
		protos.SetUnencryptedHTTP2(true)
	default:
		protos.SetHTTP1(true)
	}
	tr.Protocols = protos
	return tr
}

// sniFor is the SNI of a connection: the transport socket's sni, or with auto_sni
// (or auto_host_sni) the request's host.
func (c *upstreamCluster) sniFor(authority string) string {
	t := c.cfg.tls
	if t == nil {
		return ""
	}
	if (t.autoSNI || c.cfg.autoSNI) && authority != "" {
		return hostOnly(authority)
	}
	return t.sni
}
