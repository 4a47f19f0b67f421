package extproc

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"cdr.dev/slog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// Target is everything the server needs to serve one pool.
type Target struct {
	Pool     *keypool.Pool
	Provider providers.Provider
	// AllowBYOK lets a request that carries the client's own credential through
	// untouched (and never fails it over).
	AllowBYOK bool
	// ModelHeader is the lower-case request header that names the request's model
	// (for per-model cooldowns), removed before the request goes upstream. Empty:
	// none is read.
	ModelHeader string
}

// Headers names the headers and metadata the server and the Envoy configuration
// agree on.
type Headers struct {
	// PoolMetadataKey is the gRPC initial metadata key that names the pool.
	PoolMetadataKey string
	// RequestID correlates the attempts of a request (x-request-id).
	RequestID string
	// AttemptCount numbers the attempts (x-envoy-attempt-count).
	AttemptCount string
	// RetryMarker is added to a response whose key failed.
	RetryMarker string
}

// Options configures NewServer.
type Options struct {
	// Targets maps a pool name to what serves it. Required (it may be empty, and
	// replaced later with SetTargets).
	Targets map[string]*Target
	// Headers names the headers shared with Envoy. Required.
	Headers Headers
	// Logger receives the server's logs. Default: discard.
	Logger slog.Logger
	// LogLevel is the level Logger was leveled to. Lines below it are never built:
	// slog builds an entry, with its caller's stack, before it checks the level.
	// Default: the zero value, slog.LevelDebug: every line is built.
	LogLevel slog.Level
	// Metrics records what the server does. Default: unregistered metrics.
	Metrics *Metrics
	// Clock tells the time of durations and of the last status seen per key.
	// Default: the system clock.
	Clock keypool.Clock
	// ClassifyBodies lets the server ask Envoy for the error body of a failure answer
	// whose class the body can refine (body.go). Envoy's ext_proc filter must allow
	// it (allow_mode_override: true, as the generated configuration does): without
	// it Envoy ignores the request and the failure could not fail over. Default
	// false: every answer is classified from its headers.
	ClassifyBodies bool
}

// Server implements envoy.service.ext_proc.v3.ExternalProcessor.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	headers  Headers
	log      slog.Logger
	logLevel slog.Level
	metrics  *Metrics
	clock    keypool.Clock
	bodies   bool // Options.ClassifyBodies

	markers map[keypool.Class]*corev3.HeaderValueOption // the retry marker, per class; shared, never modified

	targets atomic.Pointer[targetSet]
	swapMu  sync.Mutex // serializes SetTargets; never taken by a stream

	// attempts recycles the state of ended streams. An attempt (its answers'
	// storage and its received message included) is about 1 KB, allocated per
	// upstream attempt: under load, recycling it takes about a tenth of the bytes
	// the server allocates per attempt off the garbage collector (BENCHMARKS.md).
	attempts sync.Pool
}

// NewServer returns a Server for opts.
func NewServer(opts Options) (*Server, error) {
	h := opts.Headers
	if h.PoolMetadataKey == "" || h.RequestID == "" || h.AttemptCount == "" || h.RetryMarker == "" {
		return nil, errors.New("extproc: every header name in Options.Headers is required")
	}
	m := opts.Metrics
	if m == nil {
		m = NewMetrics(nil)
	}
	s := &Server{headers: h, log: opts.Logger, logLevel: opts.LogLevel, metrics: m, clock: opts.Clock, bodies: opts.ClassifyBodies,
		markers: map[keypool.Class]*corev3.HeaderValueOption{}}
	for _, c := range keypool.Classes() {
		s.markers[c] = setHeader(h.RetryMarker, string(c))
	}
	if err := s.SetTargets(opts.Targets); err != nil {
		return nil, err
	}
	return s, nil
}

// SetTargets replaces what the server serves, atomically: streams that start after
// it returns use targets; streams already open finish on the targets they started
// with. It validates targets as NewServer does and keeps the old ones on error. The
// caller must not modify targets afterwards. Safe for concurrent use; the streams
// take no lock.
func (s *Server) SetTargets(targets map[string]*Target) error {
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	set, err := s.compile(targets)
	if err != nil {
		return err
	}
	old := s.targets.Swap(set)
	s.metrics.forgetRemoved(old, set)
	return nil
}

// Process serves one ext_proc stream: one upstream attempt of one request.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	a := s.newAttempt(ctx)
	defer s.recycle(ctx, a)
	for {
		// Each message is decoded into the attempt's own ProcessingRequest: decoding
		// resets it first, and what the attempt keeps of an earlier message (its
		// header lists) was allocated by that message's decoding, not in it.
		req := &a.msg
		err := stream.RecvMsg(req)
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			return nil // Envoy closed the stream: the attempt is over.
		}
		if err != nil {
			return err
		}
		resp := a.handle(ctx, req)
		if resp == nil {
			continue
		}
		// grpc-go encodes the answer before SendMsg returns: the attempt's storage
		// it was built in is free again afterwards.
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// newAttempt starts the state of one stream, naming its pool from the initial
// metadata that Envoy's filter configuration sends on every stream.
func (s *Server) newAttempt(ctx context.Context) *attempt {
	a, _ := s.attempts.Get().(*attempt)
	if a == nil {
		a = new(attempt)
	}
	a.server = s
	// ValueFromIncomingContext reads one key without copying the metadata map.
	if v := metadata.ValueFromIncomingContext(ctx, s.headers.PoolMetadataKey); len(v) > 0 {
		a.poolName = v[0]
	}
	a.target = s.targets.Load().byName[a.poolName]
	return a
}

// recycle ends a stream's attempt and keeps its storage for another stream. Nothing
// refers to it once Process returns: grpc-go has encoded every answer, and what the
// pool and the provider were given they were given by value or for the call only.
func (s *Server) recycle(ctx context.Context, a *attempt) {
	a.end(ctx)
	*a = attempt{}
	s.attempts.Put(a)
}

// marker is the option that sets the retry marker for a failure of class c; its
// value names the class, for logs and for Envoy's access log.
func (s *Server) marker(c keypool.Class) *corev3.HeaderValueOption {
	if o, ok := s.markers[c]; ok {
		return o
	}
	return setHeader(s.headers.RetryMarker, string(c))
}

// now reads the server's clock.
func (s *Server) now() time.Time {
	if s.clock == nil {
		return time.Now()
	}
	return s.clock.Now()
}

// debug reports whether debug lines are logged.
func (s *Server) debug() bool { return s.logLevel <= slog.LevelDebug }
