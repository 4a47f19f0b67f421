package app

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"cdr.dev/slog/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/extproc"
	"github.com/envoy-keypool/envoy-keypool/keypool"
	"github.com/envoy-keypool/envoy-keypool/providers"
)

// snapshot is what a configuration reload replaces besides the ext_proc server's
// targets (swapped by extproc.Server.SetTargets): the admin API, the key-state
// metrics and the secrets to mask. It is built in full before it is published with
// one atomic store; an admin request uses the snapshot current when it arrived.
type snapshot struct {
	cfg       *config.Config
	admin     *admin.Handler
	collector *admin.KeyStateCollector
	redactor  *strings.Replacer
}

// redact masks every secret of the snapshot's configuration in s.
func (s *snapshot) redact(v string) string { return s.redactor.Replace(v) }

// newExtProc is the one ext_proc server of the process, serving cfg's targets;
// reloads give it new targets.
func (s *server) newExtProc(cfg *config.Config, targets map[string]*extproc.Target) (*extproc.Server, error) {
	return extproc.NewServer(extproc.Options{
		Targets: targets,
		Headers: extproc.Headers{
			PoolMetadataKey: cfg.Envoy.PoolMetadataKey,
			RequestID:       cfg.Envoy.RequestIDHeader,
			AttemptCount:    cfg.Envoy.AttemptCountHeader,
			RetryMarker:     cfg.Envoy.RetryMarkerHeader,
		},
		Logger:   s.log.Named("extproc"),
		LogLevel: logLevel(cfg.Log),
		Metrics:  s.metrics,
		// Only as the generated Envoy configuration allows: without
		// allow_mode_override Envoy ignores the request for a body.
		ClassifyBodies: cfg.Envoy.ClassifiesErrorBodies(),
	})
}

// build makes the targets and the snapshot of cfg. The pools share the server's
// state backend, so a key keeps its cooldown across reloads as long as its id and
// value do (state is keyed by id and a fingerprint of the value: a rotated value
// starts clean).
func (s *server) build(cfg *config.Config) (map[string]*extproc.Target, *snapshot, error) {
	targets, pools, err := buildTargets(cfg, s.state.state)
	if err != nil {
		return nil, nil, err
	}
	loaded := time.Now()
	return targets, &snapshot{
		cfg: cfg,
		admin: admin.NewHandler(admin.Options{
			Pools:      pools,
			Token:      cfg.AdminToken(),
			Gatherer:   s.reg,
			Ready:      s.state.ready,
			Draining:   s.draining.Load,
			Logger:     s.log.Named("admin"),
			StatusPage: cfg.StatusPageOn(),
			LastStatus: s.lastStatus,
			Info: func() admin.ProcessInfo {
				info := admin.ProcessInfo{
					Version: buildInfo().Version, StateBackend: s.state.kind,
					Started: s.startedAt, ConfigLoaded: loaded,
				}
				if e := s.lastReloadErr.Load(); e != nil {
					info.LastReloadError = *e
				}
				return info
			},
		}),
		collector: admin.NewKeyStateCollector(pools),
		redactor:  newRedactor(cfg),
	}, nil
}

// lastStatus is the last upstream status the ext_proc server saw for a key.
func (s *server) lastStatus(pool, keyID string) (admin.LastStatus, bool) {
	code, at, ok := s.ext.LastStatus(pool, keyID)
	return admin.LastStatus{Code: code, At: at}, ok
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

// newRedactor replaces every secret of cfg by what it is, for text that may hold
// one (a recovered panic).
func newRedactor(cfg *config.Config) *strings.Replacer {
	var pairs []string
	for _, p := range cfg.Pools {
		for _, k := range p.ResolvedKeys() {
			pairs = append(pairs, k.Value(), "[key "+p.Name+"/"+k.ID()+"]")
		}
	}
	if t := cfg.AdminToken(); t != "" {
		pairs = append(pairs, t, "[admin token]")
	}
	if r := cfg.State.Redis; r != nil {
		for _, v := range []string{r.ResolvedPassword(), r.ResolvedSentinelPassword()} {
			if v != "" {
				pairs = append(pairs, v, "[redis password]")
			}
		}
	}
	return strings.NewReplacer(pairs...)
}

// requestReload asks the reload loop for a reload; requests that arrive while one
// is pending are folded into it.
func (s *server) requestReload(why string) {
	select {
	case s.reloadCh <- why:
	default:
	}
}

// runReloads serves reload requests one at a time until ctx ends.
func (s *server) runReloads(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case why := <-s.reloadCh:
			_ = s.reload(ctx, why)
		}
	}
}

// reload reads the configuration file and its secrets again and, if they are valid,
// serves them. A configuration with any problem is refused as a whole: the one in
// service stays, and the log says which fields are wrong.
func (s *server) reload(ctx context.Context, why string) error {
	start := time.Now()
	var certErr error
	if s.certs != nil {
		if certErr = s.certs.reload(); certErr != nil {
			s.log.Error(ctx, "TLS certificate reload refused; the certificates in use stay", slog.F("trigger", why), slog.Error(certErr))
		}
	}
	cfg, err := s.load()
	if err != nil {
		s.refused(errors.Join(certErr, err))
		s.log.Error(ctx, "configuration reload refused; the previous configuration keeps serving",
			slog.F("trigger", why), slog.F("problems", strings.Split(err.Error(), "\n")))
		return err
	}
	old := s.cur.Load()
	for _, field := range restartOnlyChanges(s.started, cfg) {
		s.log.Warn(ctx, "a changed setting takes effect only after a restart; the running value stays",
			slog.F("field", field))
	}
	keepRestartOnly(cfg, s.started)
	if s.watcher != nil {
		s.watcher.watch(s.watchedFiles(cfg))
	}
	if certErr == nil {
		s.lastReloadErr.Store(nil)
	}
	if reflect.DeepEqual(old.cfg, cfg) {
		s.settled(certErr, resultUnchanged)
		s.log.Debug(ctx, "configuration reload: nothing changed", slog.F("trigger", why))
		return nil
	}
	targets, next, err := s.build(cfg)
	if err == nil {
		err = s.ext.SetTargets(targets)
	}
	if err != nil {
		s.refused(errors.Join(certErr, err))
		s.log.Error(ctx, "configuration reload refused; the previous configuration keeps serving",
			slog.F("trigger", why), slog.F("problems", []string{err.Error()}))
		return err
	}
	s.cur.Store(next)
	s.settled(certErr, resultSuccess)
	fields := []slog.Field{slog.F("trigger", why), slog.F("took", time.Since(start)), slog.F("pools", len(cfg.Pools))}
	for _, c := range diffKeys(old.cfg, cfg) {
		fields = append(fields, slog.F(c.what, c.ids))
	}
	s.log.Info(ctx, "configuration reloaded", fields...)
	return nil
}

// watchedFiles are the files whose change triggers a reload.
func (s *server) watchedFiles(cfg *config.Config) []string {
	files := append([]string{s.configPath}, cfg.SecretFiles()...)
	if s.certs != nil {
		files = append(files, s.certs.paths()...)
	}
	return files
}

// restartOnlyChanges names the settings of next that differ from the running ones
// but are only read at start: the listeners, the state backend, logging, shutdown.
func restartOnlyChanges(running, next *config.Config) []string {
	var out []string
	rl, nl := running.Listen, next.Listen
	for _, f := range []struct {
		name string
		a, b any
	}{
		{"listen.grpc", rl.GRPC, nl.GRPC},
		{"listen.socket_mode", rl.SocketMode, nl.SocketMode},
		{"listen.tls", rl.TLS, nl.TLS},
		{"listen.admin", rl.Admin, nl.Admin},
		{"listen.max_concurrent_streams", rl.MaxConcurrentStreams, nl.MaxConcurrentStreams},
		{"listen.max_message_bytes", rl.MaxMessageBytes, nl.MaxMessageBytes},
		{"state", running.State, next.State},
		{"log", running.Log, next.Log},
		{"shutdown", running.Shutdown, next.Shutdown},
		// The header names are the ext_proc server's, set once.
		{"envoy.pool_metadata_key", running.Envoy.PoolMetadataKey, next.Envoy.PoolMetadataKey},
		{"envoy.request_id_header", running.Envoy.RequestIDHeader, next.Envoy.RequestIDHeader},
		{"envoy.attempt_count_header", running.Envoy.AttemptCountHeader, next.Envoy.AttemptCountHeader},
		{"envoy.retry_marker_header", running.Envoy.RetryMarkerHeader, next.Envoy.RetryMarkerHeader},
		{"envoy.classify_error_bodies", running.Envoy.ClassifiesErrorBodies(), next.Envoy.ClassifiesErrorBodies()},
	} {
		if !reflect.DeepEqual(f.a, f.b) {
			out = append(out, f.name)
		}
	}
	return out
}

// keepRestartOnly gives next the running values of the settings read only at start,
// so that what the snapshot says is what is in force.
func keepRestartOnly(next, running *config.Config) {
	next.Listen, next.State, next.Log, next.Shutdown = running.Listen, running.State, running.Log, running.Shutdown
	e, r := &next.Envoy, running.Envoy
	e.PoolMetadataKey, e.RequestIDHeader, e.AttemptCountHeader, e.RetryMarkerHeader =
		r.PoolMetadataKey, r.RequestIDHeader, r.AttemptCountHeader, r.RetryMarkerHeader
	e.ClassifyErrorBodies = r.ClassifyErrorBodies
}

type keyChange struct {
	what string // keys_added, keys_removed, keys_rotated, pools_added, pools_removed
	ids  []string
}

// diffKeys says, by pool/id, what a reload changed.
func diffKeys(old, next *config.Config) []keyChange {
	refs := func(c *config.Config) map[string]string {
		m := map[string]string{}
		for _, p := range c.Pools {
			for _, k := range p.ResolvedKeys() {
				m[p.Name+"/"+k.ID()] = k.Ref()
			}
		}
		return m
	}
	o, n := refs(old), refs(next)
	var added, removed, rotated, poolsAdded, poolsRemoved []string
	for id, ref := range n {
		switch oref, ok := o[id]; {
		case !ok:
			added = append(added, id)
		case oref != ref:
			rotated = append(rotated, id)
		}
	}
	for id := range o {
		if _, ok := n[id]; !ok {
			removed = append(removed, id)
		}
	}
	for _, p := range next.Pools {
		if _, ok := old.Pool(p.Name); !ok {
			poolsAdded = append(poolsAdded, p.Name)
		}
	}
	for _, p := range old.Pools {
		if _, ok := next.Pool(p.Name); !ok {
			poolsRemoved = append(poolsRemoved, p.Name)
		}
	}
	var out []keyChange
	for _, c := range []keyChange{
		{"pools_added", poolsAdded}, {"pools_removed", poolsRemoved},
		{"keys_added", added}, {"keys_removed", removed}, {"keys_rotated", rotated},
	} {
		if len(c.ids) > 0 {
			slices.Sort(c.ids)
			out = append(out, c)
		}
	}
	return out
}

// Reload results, the values of the result label.
const (
	resultSuccess   = "success"
	resultError     = "error"
	resultUnchanged = "unchanged"
)

type reloadMetrics struct {
	total       *prometheus.CounterVec
	lastOK      prometheus.Gauge
	lastSuccess prometheus.Gauge
}

func newReloadMetrics(reg prometheus.Registerer) *reloadMetrics {
	m := &reloadMetrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "envoy_keypool_config_reloads_total",
			Help: "Configuration reloads (SIGHUP or a changed file), by result: success, unchanged, or error (refused; the previous configuration keeps serving).",
		}, []string{"result"}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "envoy_keypool_config_last_reload_successful",
			Help: "1 when the last configuration reload was applied (or there was none), 0 when it was refused.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "envoy_keypool_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in service was loaded, in Unix seconds.",
		}),
	}
	for _, r := range []string{resultSuccess, resultError, resultUnchanged} {
		m.total.WithLabelValues(r)
	}
	m.lastOK.Set(1)
	m.lastSuccess.SetToCurrentTime()
	reg.MustRegister(m.total, m.lastOK, m.lastSuccess)
	return m
}

// settled records the result of a reload whose configuration was valid: one
// result per reload, an error when the certificates were refused.
func (s *server) settled(certErr error, result string) {
	if certErr != nil {
		s.refused(certErr)
		return
	}
	s.reloads.result(result)
}

// refused records why a reload was refused, for the status page.
func (s *server) refused(err error) {
	msg := err.Error()
	s.lastReloadErr.Store(&msg)
	s.reloads.result(resultError)
}

func (m *reloadMetrics) result(r string) {
	m.total.WithLabelValues(r).Inc()
	switch r {
	case resultError:
		m.lastOK.Set(0)
	case resultSuccess:
		m.lastOK.Set(1)
		m.lastSuccess.SetToCurrentTime()
	case resultUnchanged:
		m.lastOK.Set(1)
	}
}
