package testredis

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy in front of a server, to cut a client off without
// stopping Redis: Freeze holds every byte in both directions (a network partition:
// connections stay open and calls hang until their timeout), Thaw lets them flow
// again; DelayEvery makes one call in n slow. Clients connect to Proxy.Addr
// instead of Server.Addr.
type Proxy struct {
	tb     testing.TB
	target string
	ln     net.Listener

	mu     sync.Mutex // protects the fields below
	thawed chan struct{}
	conns  map[net.Conn]struct{}
	closed bool

	delayEvery atomic.Int64 // 0: no delay
	delayFor   atomic.Int64 // nanoseconds
	sent       atomic.Int64 // chunks clients sent
	delayed    atomic.Int64 // of which delayed

	wg sync.WaitGroup
}

// NewProxy listens on a free loopback port and forwards to target (host:port).
// It is closed when the test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testredis: proxy listen: %v", err)
	}
	thawed := make(chan struct{})
	close(thawed)
	p := &Proxy{tb: tb, target: target, ln: ln, thawed: thawed, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.close)
	return p
}

// Addr is host:port of the proxy.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is redis://host:port of the proxy.
func (p *Proxy) URL() string { return "redis://" + p.Addr() }

// Freeze stops forwarding: what clients and server send is held until Thaw. New
// connections are accepted and frozen too.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
		p.thawed = make(chan struct{})
	default: // already frozen
	}
}

// Thaw forwards again, held bytes first.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
}

// DelayEvery holds every nth chunk a client sends (across connections) for d
// before forwarding it, the rest of that connection's traffic waiting behind it:
// a Redis that is slow now and then. go-redis writes a command or a pipeline in
// one chunk, so this is one call in n. n = 0 stops delaying.
func (p *Proxy) DelayEvery(n int, d time.Duration) {
	p.delayFor.Store(int64(d))
	p.delayEvery.Store(int64(n))
}

// Delayed is how many chunks DelayEvery has held so far.
func (p *Proxy) Delayed() int { return int(p.delayed.Load()) }

// maybeDelay holds a client's chunk when DelayEvery says so.
func (p *Proxy) maybeDelay() {
	every := p.delayEvery.Load()
	if every <= 0 || p.sent.Add(1)%every != 0 {
		return
	}
	p.delayed.Add(1)
	time.Sleep(time.Duration(p.delayFor.Load())) // a slow network, not synchronisation
}

func (p *Proxy) gate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.thawed
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client, server) {
			return
		}
		p.wg.Add(2)
		go p.pipe(server, client, true)
		go p.pipe(client, server, false)
	}
}

func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

// pipe copies src to dst, waiting at the gate before each write; toServer
// says the bytes come from the client.
func (p *Proxy) pipe(dst, src net.Conn, toServer bool) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if toServer {
				p.maybeDelay()
			}
			<-p.gate()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or closed: closing both ends tells the other side
		}
	}
}

func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.Thaw()
	_ = p.ln.Close()
	p.wg.Wait()
}
