package standin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
)

// Proxy is a running (or ready to run) stand-in for one Envoy bootstrap.
type Proxy struct {
	opts     Options
	cfg      *config
	clusters map[string]*upstreamCluster
	stats    counters

	logMu     sync.Mutex // protects logClosed and writes to opts.Log
	logClosed bool

	mu       sync.Mutex // protects the fields below
	ln       net.Listener
	srv      *http.Server
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	started  bool
	closed   bool
	serveErr error
}

// New checks bs and prepares a Proxy. It fails, naming the field, on configuration the
// stand-in does not implement (errors.Is(err, ErrUnsupported)) or that Envoy would
// reject.
func New(bs *bootstrapv3.Bootstrap, opts Options) (*Proxy, error) {
	if bs == nil {
		return nil, errors.New("envoy stand-in: nil bootstrap")
	}
	cfg, err := buildConfig(bs)
	if err != nil {
		return nil, fmt.Errorf("envoy stand-in: %w", err)
	}
	opts = opts.withDefaults()
	for name := range opts.Endpoints {
		if _, ok := cfg.clusters[name]; !ok {
			return nil, fmt.Errorf("envoy stand-in: Options.Endpoints names unknown cluster %q", name)
		}
	}
	p := &Proxy{opts: opts, cfg: cfg, clusters: map[string]*upstreamCluster{}}
	for name, cc := range cfg.clusters {
		p.clusters[name] = newUpstreamCluster(p, cc)
	}
	return p, nil
}

// Start listens, starts the health checkers and serves until ctx ends or Close. Like
// Envoy's cluster warming, it returns only after every health-checked host had its
// first check, so the first request sees settled health.
func (p *Proxy) Start(ctx context.Context) error {
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		return errors.New("envoy stand-in: already started")
	}
	p.started = true
	p.mu.Unlock()

	addr := p.cfg.listenAddr
	if p.opts.ListenAddr != "" {
		addr = p.opts.ListenAddr
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("envoy stand-in: listen %s: %w", addr, err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var firsts []chan struct{}
	for _, c := range p.clusters {
		if c.cfg.health == nil {
			continue
		}
		for _, h := range c.hosts {
			done := make(chan struct{})
			firsts = append(firsts, done)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.runHealthChecks(runCtx, c, h, done)
			}()
		}
	}
	for _, d := range firsts {
		select {
		case <-d:
		case <-ctx.Done():
			cancel()
			_ = ln.Close()
			p.wg.Wait()
			return fmt.Errorf("envoy stand-in: waiting for first health checks: %w", ctx.Err())
		}
	}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(p.cfg.hcm.allowHTTP2)
	srv := &http.Server{Handler: p, Protocols: protos, BaseContext: func(net.Listener) context.Context { return runCtx }}

	p.mu.Lock()
	p.ln, p.srv, p.cancel = ln, srv, cancel
	p.mu.Unlock()

	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.mu.Lock()
			p.serveErr = err
			p.mu.Unlock()
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = p.Close()
		case <-runCtx.Done():
		}
	}()
	p.logf("listening on %s", ln.Addr())
	return nil
}

// Addr is the address the listener is bound to, after Start.
func (p *Proxy) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return ""
	}
	return p.ln.Addr().String()
}

// Shutdown stops accepting requests, waits for those in flight until ctx ends, then
// stops the health checkers and closes upstream connections.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	srv, cancel := p.srv, p.cancel
	p.mu.Unlock()
	var err error
	if srv != nil {
		err = srv.Shutdown(ctx)
		if err != nil {
			_ = srv.Close()
		}
	}
	if cancel != nil {
		cancel()
	}
	p.wg.Wait()
	for _, c := range p.clusters {
		c.close()
	}
	p.logMu.Lock()
	p.logClosed = true
	p.logMu.Unlock()
	p.mu.Lock()
	serveErr := p.serveErr
	p.mu.Unlock()
	return errors.Join(err, serveErr)
}

// Close stops the proxy at once, cutting requests in flight.
func (p *Proxy) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := p.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
