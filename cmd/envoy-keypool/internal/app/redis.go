package app

import (
	"context"
	"crypto/tls"
	"fmt"

	"cdr.dev/slog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/keypool/redisstate"
)

// newRedisState connects the shared state. A Redis that is down at start is not
// fatal: the replica serves from its local view and converges once Redis answers.
func newRedisState(ctx context.Context, cfg *config.Config, log slog.Logger, reg prometheus.Registerer) (*stateBackend, error) {
	rc := cfg.State.Redis
	pools := make([]string, len(cfg.Pools))
	for i, p := range cfg.Pools {
		pools[i] = p.Name
	}
	opts := redisstate.Options{
		Pools:               pools,
		URL:                 rc.URL,
		Addrs:               rc.Addrs,
		MasterName:          rc.MasterName,
		Cluster:             rc.Cluster,
		DB:                  rc.DB,
		Username:            rc.Username,
		Password:            rc.ResolvedPassword(),
		SentinelUsername:    rc.SentinelUsername,
		SentinelPassword:    rc.ResolvedSentinelPassword(),
		Prefix:              rc.Prefix,
		Timeout:             rc.Timeout.Std(),
		DialTimeout:         rc.DialTimeout.Std(),
		HealthCheckInterval: rc.HealthCheckInterval.Std(),
		RequestTTL:          cfg.State.RequestTTL.Std(),
		Logger:              log.Named("redis"),
		Registerer:          reg,
	}
	if rc.TLS {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	// go-redis writes its own lines (one per failed dial during an outage) to
	// stderr through a process-wide logger: route them into this process's
	// log, at debug level, since redisstate logs an outage once already.
	redis.SetLogger(goRedisLog{log.Named("go-redis")})
	st, err := redisstate.New(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("state.redis: %w", err)
	}
	return &stateBackend{
		kind:  "redis",
		state: st,
		ready: st.Ready,
		close: func() { _ = st.Close() },
	}, nil
}

// goRedisLog is go-redis's logger interface on slog.
type goRedisLog struct{ log slog.Logger }

func (l goRedisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.Debug(ctx, fmt.Sprintf(format, v...))
}
