package testredis

import (
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy in front of a server, to cut a client off without
// stopping Redis: Freeze holds every byte in both directions (a network partition:
// connections stay open and calls hang until their timeout), Thaw lets them flow
// again. Clients connect to Proxy.Addr instead of Server.Addr.
type Proxy struct {
	tb     testing.TB
	target string
	ln     net.Listener

	mu     sync.Mutex // protects the fields below
	thawed chan struct{}
	conns  map[net.Conn]struct{}
	closed bool

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
		go p.pipe(server, client)
		go p.pipe(client, server)
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

// pipe copies src to dst, waiting at the gate before each write.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
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
