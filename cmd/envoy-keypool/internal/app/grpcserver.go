package app

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"cdr.dev/slog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// Keepalive, matched to the envoy_keypool cluster that `envoy-keypool envoy-config`
// generates (http2_protocol_options.connection_keepalive, see envoy/doc.go).
const (
	// minClientPingInterval is the shortest interval between a client's HTTP/2 PINGs
	// the server tolerates. gRPC's default is 5 minutes, and a client that pings more
	// often is sent GOAWAY "too_many_pings", which would cut Envoy's connection, and
	// every ext_proc stream on it, each time its keepalive fires. Envoy's keepalive
	// interval (10s generated; Envoy only adds jitter to it) must stay above this.
	minClientPingInterval = 5 * time.Second
	// serverPingTime and serverPingTimeout detect a client that went away without
	// closing its connection (a crashed host, a lost network path).
	serverPingTime    = 30 * time.Second
	serverPingTimeout = 10 * time.Second
)

// grpcServerOptions are the ext_proc server's settings: keepalive both ways, its
// limits, TLS when configured, and the recovery interceptors.
func grpcServerOptions(l config.Listen, creds credentials.TransportCredentials, rec *recoverer) []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime: minClientPingInterval,
			// Envoy pings a connection whether or not a stream is open on it, and
			// ext_proc streams are short: most pings arrive between streams.
			PermitWithoutStream: true,
		}),
		// No MaxConnectionIdle or MaxConnectionAge: Envoy keeps and reuses its
		// connections, and closing them would only add handshakes to the request path.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: serverPingTime, Timeout: serverPingTimeout}),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.MaxRecvMsgSize(l.MaxMessageBytes),
		grpc.MaxSendMsgSize(l.MaxMessageBytes),
		grpc.ChainStreamInterceptor(rec.stream),
		grpc.ChainUnaryInterceptor(rec.unary),
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	return opts
}

// recoverer turns a panic in a gRPC handler into an Internal error for that one
// stream, so a bug triggered by one request never takes the process (and every
// other stream) down. The panic is counted and logged with every key value it might
// contain replaced by the key's id.
type recoverer struct {
	log    slog.Logger
	panics *prometheus.CounterVec
	// redact returns s with every secret of the current configuration masked.
	redact func(s string) string
}

func newRecoverer(log slog.Logger, reg prometheus.Registerer, redact func(string) string) *recoverer {
	r := &recoverer{
		log: log,
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_grpc_panics_total",
			Help: "gRPC handler panics recovered; the stream got an Internal error and the process kept serving.",
		}, []string{"method"}),
		redact: redact,
	}
	reg.MustRegister(r.panics)
	return r
}

// errInternal is what a stream whose handler panicked receives. Envoy turns it into
// its status_on_error reply (500 by default) for that one request.
var errInternal = status.Error(codes.Internal, "envoy-keypool: internal error")

func (r *recoverer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer r.recover(ss.Context(), info.FullMethod, &err)
	return handler(srv, ss)
}

func (r *recoverer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer r.recover(ctx, info.FullMethod, &err)
	return handler(ctx, req)
}

func (r *recoverer) recover(ctx context.Context, method string, err *error) {
	p := recover()
	if p == nil {
		return
	}
	r.panics.WithLabelValues(method).Inc()
	// The stack names functions and files; the panic value may hold anything, a key
	// value included, so both go through redact.
	r.log.Error(ctx, "recovered from a panic in a gRPC handler; the stream was answered with an internal error",
		slog.F("method", method),
		slog.F("panic", r.redact(fmt.Sprint(p))),
		slog.F("stack", r.redact(string(debug.Stack()))))
	*err = errInternal
}
