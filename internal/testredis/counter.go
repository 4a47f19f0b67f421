package testredis

import (
	"context"
	"net"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Counter is a go-redis hook that counts round trips and commands, to check a
// code path's cost: install it with client.AddHook(counter). A pipeline is one
// round trip carrying several commands; a script's NOSCRIPT fallback is two. It
// is safe for concurrent use; the zero value is ready.
//
// The handshake go-redis sends on each new connection (HELLO, AUTH, CLIENT
// SETINFO, SELECT, READONLY) is a cost of the connection, not of the code path,
// and is not counted.
type Counter struct {
	// Ignore, when set, leaves out the calls whose context it returns true for
	// (a client's background work, say). Set it before installing the hook.
	Ignore func(ctx context.Context) bool

	mu         sync.Mutex // protects the fields below
	roundTrips int
	commands   []string
}

// RoundTrips is the number of requests sent to Redis since the last Reset.
func (c *Counter) RoundTrips() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.roundTrips
}

// Commands lists the commands sent since the last Reset, lower case, in order
// ("evalsha", "mget", …).
func (c *Counter) Commands() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.commands...)
}

// Reset forgets what was counted.
func (c *Counter) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.roundTrips = 0
	c.commands = nil
}

func (c *Counter) record(ctx context.Context, cmds ...redis.Cmder) {
	if handshake(cmds) || c.Ignore != nil && c.Ignore(ctx) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.roundTrips++
	for _, cmd := range cmds {
		c.commands = append(c.commands, strings.ToLower(cmd.Name()))
	}
}

// DialHook implements redis.Hook; dials are not counted.
func (c *Counter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return next(ctx, network, addr)
	}
}

// ProcessHook implements redis.Hook.
func (c *Counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.record(ctx, cmd)
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook implements redis.Hook.
func (c *Counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.record(ctx, cmds...)
		return next(ctx, cmds)
	}
}

// handshake reports whether cmds is go-redis's connection set-up.
func handshake(cmds []redis.Cmder) bool {
	for _, cmd := range cmds {
		switch strings.ToLower(cmd.Name()) {
		case "hello", "auth", "client", "select", "readonly":
		default:
			return false
		}
	}
	return len(cmds) > 0
}
