package redisstate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// State is a keypool.State shared through Redis. It is safe for concurrent use.
// Build it with New and stop it with Close.
type State struct {
	client     redis.UniversalClient
	ownsClient bool
	keys       layout
	scripts    scriptSet
	timeout    time.Duration
	// backgroundTimeout bounds each call of a resync (Options.DialTimeout).
	backgroundTimeout time.Duration
	triedTTL          time.Duration
	healthEvery       time.Duration
	clock             keypool.Clock
	pools             []string
	hooks             testHooks

	view    *view
	health  *health
	holdOff holdOff
	metrics *metrics

	// resyncWanted asks the subscriber for a resync: set when Redis may lack
	// something this replica knows (a pending mark or override, a mark Redis
	// lost) or may hold something this replica missed (an unreadable
	// notification, a failed call).
	resyncWanted atomic.Bool
	closed       atomic.Bool

	cancel      context.CancelFunc
	done        chan struct{} // closed when the subscriber has returned
	forgetDone  chan struct{} // closed when forgetLoop has returned
	publishDone chan struct{} // closed when the view's publisher has returned
	firstSync   chan struct{} // closed after the subscriber's first attempt
	closeOnce   sync.Once

	psMu sync.Mutex // protects ps
	ps   *redis.PubSub

	forgets chan forgetReq // Forget's queue, drained by forgetLoop

	// anonPrefix and anonSeq name the failures without a request id for
	// Corroborate: each is a request of its own, across replicas.
	anonPrefix string
	anonSeq    atomic.Uint64
}

var _ keypool.State = (*State)(nil)

// New connects to the Redis opts describe and starts the subscriber that keeps
// this replica's local view fresh. It waits until the first synchronisation with
// Redis succeeded or failed, or ctx is done. It fails only on invalid options: an
// unreachable Redis gives a State that serves from its local view, reports itself
// degraded (Ready) and keeps reconnecting.
func New(ctx context.Context, opts Options) (*State, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("redisstate: %w", err)
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	client, owns := o.Client, false
	if client == nil {
		if client, err = o.newClient(); err != nil {
			return nil, fmt.Errorf("redisstate: %w", err)
		}
		owns = true
	}
	s := &State{
		client:            client,
		ownsClient:        owns,
		keys:              layout{prefix: o.Prefix},
		scripts:           newScriptSet(),
		timeout:           o.Timeout,
		backgroundTimeout: o.DialTimeout,
		triedTTL:          o.RequestTTL,
		forgets:           make(chan forgetReq, forgetQueue),
		anonPrefix:        anonPrefix(),
		healthEvery:       o.HealthCheckInterval,
		clock:             o.Clock,
		pools:             o.Pools,
		view:              newView(o.RequestTTL),
		health:            &health{log: o.Logger.Named("redisstate"), metrics: m},
		metrics:           m,
		done:              make(chan struct{}),
		forgetDone:        make(chan struct{}),
		publishDone:       make(chan struct{}),
		firstSync:         make(chan struct{}),
	}
	if o.testHooks != nil {
		s.hooks = *o.testHooks
		if o.testHooks.timeout > 0 {
			s.timeout = o.testHooks.timeout
		}
		for _, h := range o.testHooks.redisHooks {
			client.AddHook(h)
		}
	}
	m.up.Set(0)
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(runCtx)
	go s.forgetLoop(runCtx)
	go func() {
		defer close(s.publishDone)
		s.view.publishLoop(runCtx, s.now)
	}()
	select {
	case <-s.firstSync:
	case <-ctx.Done():
	}
	return s, nil
}

// Close stops the subscriber and waits for it, and closes the client New built.
// The State then answers from its local view only. Close is idempotent.
func (s *State) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.psMu.Lock()
		if s.ps != nil {
			_ = s.ps.Close() // unblocks a pending receive
		}
		s.psMu.Unlock()
		<-s.done
		<-s.forgetDone
		<-s.publishDone
		if s.ownsClient {
			err = s.client.Close()
		}
	})
	return err
}

// Ready is nil while this replica reaches Redis with a synchronised view, else an
// error wrapping ErrUnavailable: the replica still serves, from its local view,
// but is degraded. Made for a readiness endpoint.
func (s *State) Ready() error { return s.health.ready() }

// Healthy reports whether Ready is nil.
func (s *State) Healthy() bool { return s.health.up() }

// errDegraded is returned by call while the request path skips Redis.
var errDegraded = errors.New("redisstate: degraded, serving from the local view")

// errHeldOff is returned by call while the pool's last call failed moments ago.
var errHeldOff = errors.New("redisstate: the pool's last call failed just now, serving from the local view")

// errClosed is returned by call after Close.
var errClosed = errors.New("redisstate: closed")

// call runs f, a call for pool, with the State's timeout. While Redis is known
// unreachable the request path does not wait on it (f is not run) unless
// always is set; the subscriber finds out when it returns. Nor does it for
// Timeout after one of the pool's calls failed (holdOff). A failure that is
// not the caller giving up counts towards an outage (health.failed).
func (s *State) call(ctx context.Context, pool, op string, always bool, f func(ctx context.Context) error) error {
	if s.closed.Load() {
		return errClosed
	}
	if !always && !s.health.up() {
		return errDegraded
	}
	if !always && s.holdOff.active(pool, time.Now()) {
		return errHeldOff
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	err := f(cctx)
	if err == nil || errors.Is(err, redis.Nil) {
		s.health.succeeded()
		return nil
	}
	if ctx.Err() != nil {
		// The request went away (Envoy cancelled the stream): not Redis's fault.
		s.metrics.errors.WithLabelValues(op).Inc()
		return err
	}
	s.holdOff.set(pool, time.Now().Add(s.timeout))
	s.health.failed(ctx, op, err)
	s.reloadTopology()
	return err
}

// reloadTopology asks a Cluster client to reload its slot map. go-redis reloads
// it on MOVED or ASK and every 60s (ClusterStateReloadInterval), but not when a
// master died: its connections are refused, no node answers MOVED, and every
// call to the master's slots would fail until the next periodic reload
// (osscluster.go, ClusterClient.process). The reload is asynchronous and
// debounced by go-redis. Other clients need nothing: a Sentinel client follows
// the Sentinels' announcement of the new master.
func (s *State) reloadTopology() {
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		cc.ReloadState(context.Background())
	}
}

func (s *State) now() time.Time {
	if s.clock == nil {
		return time.Now()
	}
	return s.clock.Now()
}
