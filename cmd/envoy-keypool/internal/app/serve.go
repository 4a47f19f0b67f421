package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"cdr.dev/slog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/extproc"
	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

type serveOptions struct {
	ShutdownTimeout time.Duration
	Stdout, Stderr  io.Writer
}

// serve runs the server until ctx ends, then drains: the gRPC health service turns
// NOT_SERVING so Envoy's health checks move new streams to other replicas, and
// in-flight streams get up to ShutdownTimeout to finish.
func serve(ctx context.Context, cfg *config.Config, opts serveOptions) error {
	log := newLogger(opts.Stderr, cfg.Log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	st, err := newState(ctx, cfg, log, reg)
	if err != nil {
		return err
	}
	defer st.close()

	targets, pools, err := buildTargets(cfg, st.state)
	if err != nil {
		return err
	}
	ext, err := extproc.NewServer(extproc.Options{
		Targets: targets,
		Headers: extproc.Headers{
			PoolMetadataKey: cfg.Envoy.PoolMetadataKey,
			RequestID:       cfg.Envoy.RequestIDHeader,
			AttemptCount:    cfg.Envoy.AttemptCountHeader,
			RetryMarker:     cfg.Envoy.RetryMarkerHeader,
		},
		Logger:   log.Named("extproc"),
		LogLevel: logLevel(cfg.Log),
		// The generated Envoy configuration allows the mode override exactly when
		// this is on (envoy.classify_error_bodies).
		ClassifyBodies: cfg.Envoy.ClassifiesErrorBodies(),
		Metrics:        extproc.NewMetrics(reg),
	})
	if err != nil {
		return err
	}
	reg.MustRegister(admin.NewKeyStateCollector(pools))

	grpcLis, err := net.Listen("tcp", cfg.Listen.GRPC)
	if err != nil {
		return fmt.Errorf("listen.grpc: %w", err)
	}
	adminLis, err := net.Listen("tcp", cfg.Listen.Admin)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("listen.admin: %w", err)
	}

	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, ext)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)

	adminHandler := admin.NewHandler(admin.Options{
		Pools:    pools,
		Token:    cfg.AdminToken(),
		Gatherer: reg,
		Ready:    st.ready,
		Logger:   log.Named("admin"),
	})
	httpSrv := &http.Server{Handler: adminHandler, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 2)
	go func() { errc <- gs.Serve(grpcLis) }()
	go func() { errc <- httpSrv.Serve(adminLis) }()

	log.Info(ctx, "envoy-keypool ready", slog.F("grpc", grpcLis.Addr().String()),
		slog.F("admin", adminLis.Addr().String()), slog.F("pools", len(pools)), slog.F("state", st.kind))
	// The ready line tests and scripts wait for, whatever the log format.
	fmt.Fprintf(opts.Stdout, "envoy-keypool ready grpc=%s admin=%s\n", grpcLis.Addr(), adminLis.Addr())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}

	log.Info(context.Background(), "shutting down: draining in-flight streams", slog.F("timeout", opts.ShutdownTimeout))
	hs.Shutdown() // every service NOT_SERVING
	adminHandler.Drain()
	drained := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(opts.ShutdownTimeout):
		log.Warn(context.Background(), "shutdown timeout: closing the streams still open")
		gs.Stop()
		<-drained
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(shutdownCtx)
	log.Info(context.Background(), "stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return serveErr
	}
	return nil
}

// buildTargets turns the configured pools into what the ext_proc server serves.
func buildTargets(cfg *config.Config, state keypool.State) (map[string]*extproc.Target, []admin.Pool, error) {
	targets := make(map[string]*extproc.Target, len(cfg.Pools))
	pools := make([]admin.Pool, 0, len(cfg.Pools))
	for i := range cfg.Pools {
		pc := &cfg.Pools[i]
		pool, err := keypool.NewPool(pc.PoolOptions(state))
		if err != nil {
			return nil, nil, fmt.Errorf("pools[%d]: %w", i, err)
		}
		prov, err := providers.Build(pc.ProviderSpec())
		if err != nil {
			return nil, nil, fmt.Errorf("pools[%d]: %w", i, err)
		}
		targets[pc.Name] = &extproc.Target{
			Pool: pool, Provider: prov, AllowBYOK: pc.BYOK == config.BYOKAllow, ModelHeader: pc.ModelHeader,
		}
		pools = append(pools, admin.Pool{Pool: pool, Provider: prov.Name()})
	}
	return targets, pools, nil
}
