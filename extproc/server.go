package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"

	"cdr.dev/slog/v3"
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
	// FailsOver reports whether an upstream status marks the key and retries.
	FailsOver func(status int) bool
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
	// Targets maps a pool name to what serves it. Required.
	Targets map[string]*Target
	// Headers names the headers shared with Envoy. Required.
	Headers Headers
	// Logger receives the server's logs. Default: discard.
	Logger slog.Logger
	// Metrics records what the server does. Default: none.
	Metrics *Metrics
}

// Server implements envoy.service.ext_proc.v3.ExternalProcessor.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	targets map[string]*Target
	headers Headers
	log     slog.Logger
	metrics *Metrics
}

// NewServer returns a Server for opts.
func NewServer(opts Options) (*Server, error) {
	h := opts.Headers
	if h.PoolMetadataKey == "" || h.RequestID == "" || h.AttemptCount == "" || h.RetryMarker == "" {
		return nil, errors.New("extproc: every header name in Options.Headers is required")
	}
	for name, t := range opts.Targets {
		if t == nil || t.Pool == nil || t.Provider == nil || t.FailsOver == nil {
			return nil, fmt.Errorf("extproc: target %q is incomplete", name)
		}
	}
	m := opts.Metrics
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Server{targets: opts.Targets, headers: h, log: opts.Logger, metrics: m}, nil
}

// Process serves one ext_proc stream: one upstream attempt of one request.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	a := s.newAttempt(ctx)
	defer a.release(ctx)
	for {
		req, err := stream.Recv()
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
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// newAttempt starts the state of one stream, naming its pool from the initial
// metadata that Envoy's filter configuration sends on every stream.
func (s *Server) newAttempt(ctx context.Context) *attempt {
	a := &attempt{server: s}
	// ValueFromIncomingContext reads one key without copying the metadata map.
	if v := metadata.ValueFromIncomingContext(ctx, s.headers.PoolMetadataKey); len(v) > 0 {
		a.poolName = v[0]
	}
	a.target = s.targets[a.poolName]
	return a
}
