package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"cdr.dev/slog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/extproc"
)

type serveOptions struct {
	// ConfigPath is the file the configuration was loaded from, watched for changes.
	ConfigPath string
	// Load reads the configuration again, for a reload.
	Load func() (*config.Config, error)
	// Signals delivers SIGHUP (reload) and SIGTERM/SIGINT (shut down); nil: none,
	// ctx ending shuts down.
	Signals        <-chan os.Signal
	Stdout, Stderr io.Writer
}

// server is one running envoy-keypool: the settings fixed at start, and the
// snapshot of what a reload may change.
type server struct {
	log        slog.Logger
	started    *config.Config // the configuration at start: listeners, state, shutdown
	configPath string
	load       func() (*config.Config, error)
	reg        *prometheus.Registry
	state      *stateBackend
	metrics    *extproc.Metrics
	ext        *extproc.Server // one for the process: reloads give it new targets (SetTargets)
	certs      *certificates   // nil without TLS
	reloads    *reloadMetrics
	watcher    *fileWatcher // nil when the file system cannot be watched

	startedAt     time.Time
	cur           atomic.Pointer[snapshot]
	draining      atomic.Bool
	lastReloadErr atomic.Pointer[string] // why the last reload was refused; nil when applied
	reloadCh      chan string            // reload requests, by what asked for them
}

// serve runs the server until ctx ends or a SIGTERM/SIGINT arrives, reloading on
// SIGHUP and on file changes, then shuts down: see shutdown.
func serve(ctx context.Context, cfg *config.Config, opts serveOptions) error {
	log := newLogger(opts.Stderr, cfg.Log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	s := &server{
		log: log, started: cfg, reg: reg, metrics: extproc.NewMetrics(reg),
		reloads: newReloadMetrics(reg), reloadCh: make(chan string, 1),
		configPath: opts.ConfigPath, load: opts.Load, startedAt: time.Now(),
	}
	if exposed, why := cfg.Listen.Exposed(); exposed {
		log.Warn(ctx, "INSECURE LISTENER: "+why)
	}
	if cfg.Listen.TLS != nil {
		certs, err := newCertificates(*cfg.Listen.TLS)
		if err != nil {
			return err
		}
		s.certs = certs
	}

	st, err := newState(ctx, cfg, log, reg)
	if err != nil {
		return err
	}
	defer st.close()
	s.state = st

	targets, first, err := s.build(cfg)
	if err != nil {
		return err
	}
	if s.ext, err = s.newExtProc(cfg, targets); err != nil {
		return err
	}
	s.cur.Store(first)
	rec := newRecoverer(log.Named("grpc"), reg, func(v string) string { return s.cur.Load().redact(v) })
	reg.MustRegister(currentKeyState{&s.cur})

	grpcLis, grpcAddr, err := listenGRPC(cfg.Listen)
	if err != nil {
		return err
	}
	adminLis, err := net.Listen("tcp", cfg.Listen.Admin)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("listen.admin: %w", err)
	}

	var creds credentials.TransportCredentials
	if s.certs != nil {
		creds = s.certs.credentials()
	}
	gs := grpc.NewServer(grpcServerOptions(cfg.Listen, creds, rec)...)
	extprocv3.RegisterExternalProcessorServer(gs, s.ext)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	httpSrv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.cur.Load().admin.ServeHTTP(w, r) }),
		ReadHeaderTimeout: 10 * time.Second,
	}

	errc := make(chan error, 2)
	go func() { errc <- gs.Serve(grpcLis) }()
	go func() { errc <- httpSrv.Serve(adminLis) }()

	watchCtx, stopWatching := context.WithCancel(context.Background())
	defer stopWatching()
	if w, err := newFileWatcher(log.Named("watch"), func(changed []string) { s.requestReload(fmt.Sprint("changed: ", changed)) }); err != nil {
		log.Warn(ctx, "cannot watch files for changes; SIGHUP still reloads", slog.Error(err))
	} else {
		s.watcher = w
		w.watch(s.watchedFiles(cfg))
		go w.run(watchCtx)
	}
	reloadsDone := make(chan struct{})
	go func() {
		defer close(reloadsDone)
		s.runReloads(watchCtx)
	}()

	log.Info(ctx, "envoy-keypool ready", slog.F("grpc", grpcAddr), slog.F("admin", adminLis.Addr().String()),
		slog.F("pools", len(cfg.Pools)), slog.F("state", st.kind), slog.F("tls", tlsMode(cfg.Listen)),
		slog.F("version", buildInfo().Version))
	// The ready line tests and scripts wait for, whatever the log format.
	fmt.Fprintf(opts.Stdout, "envoy-keypool ready grpc=%s admin=%s\n", grpcAddr, adminLis.Addr())

	var serveErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case serveErr = <-errc:
			break wait
		case sig := <-opts.Signals:
			if sig == syscall.SIGHUP {
				s.requestReload("SIGHUP")
				continue
			}
			log.Info(context.Background(), "signal received", slog.F("signal", sig.String()))
			break wait
		}
	}
	stopWatching()
	<-reloadsDone
	s.shutdown(gs, hs, httpSrv, opts.Signals)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return serveErr
	}
	return nil
}

func tlsMode(l config.Listen) string {
	switch {
	case l.MutualTLS():
		return "mutual"
	case l.TLS != nil:
		return "server"
	}
	return "off"
}

// shutdown stops the server without losing a request: at once the gRPC health
// service answers NOT_SERVING and /readyz 503, so Envoy's health checks and
// Kubernetes take the replica out; new streams are still served for the drain
// delay, while they do; then the server stops accepting and waits up to the
// shutdown timeout for the streams in flight. A second SIGTERM or SIGINT skips what
// is left of either wait.
func (s *server) shutdown(gs *grpc.Server, hs *health.Server, httpSrv *http.Server, signals <-chan os.Signal) {
	bg := context.Background()
	drain, timeout := s.started.Shutdown.Drain(), s.started.Shutdown.Timeout.Std()
	s.log.Info(bg, "shutting down: health NOT_SERVING, /readyz 503; still serving new streams for the drain delay",
		slog.F("drain_delay", drain), slog.F("shutdown_timeout", timeout))
	hs.Shutdown() // every service NOT_SERVING, and it stays so
	s.draining.Store(true)

	done := make(chan struct{})
	defer close(done)
	interrupted := stopSignal(signals, done) // the second one: the first started the shutdown
	forced := false
	select {
	case <-time.After(drain):
	case sig := <-interrupted:
		s.log.Warn(bg, "second signal: skipping the rest of the drain delay", slog.F("signal", sig.String()))
		forced = true
	}

	s.log.Info(bg, "drain delay over: no new connections; waiting for the streams in flight",
		slog.F("shutdown_timeout", timeout))
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	if forced {
		gs.Stop()
	}
	select {
	case <-stopped:
	case <-time.After(timeout):
		s.log.Warn(bg, "shutdown timeout: closing the streams still open")
		gs.Stop()
	case sig := <-interrupted:
		s.log.Warn(bg, "second signal: closing the streams still open", slog.F("signal", sig.String()))
		gs.Stop()
	}
	<-stopped
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(ctx)
	s.log.Info(bg, "stopped")
}

// stopSignal delivers the next SIGTERM or SIGINT from signals until done is
// closed; SIGHUP (a reload) is not one and is dropped. With no signals it never
// fires.
func stopSignal(signals <-chan os.Signal, done <-chan struct{}) <-chan os.Signal {
	out := make(chan os.Signal, 1)
	if signals == nil {
		return out
	}
	go func() {
		for {
			select {
			case <-done:
				return
			case sig := <-signals:
				if sig != syscall.SIGHUP {
					out <- sig
					return
				}
			}
		}
	}()
	return out
}
