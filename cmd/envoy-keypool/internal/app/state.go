package app

import (
	"context"

	"cdr.dev/slog/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// stateBackend is the key state the configuration selects, with what the admin API
// reports of it.
type stateBackend struct {
	kind  string // "memory" or "redis"
	state keypool.State
	// ready returns nil when the state is fully available, or why it is degraded.
	ready func() error
	close func()
}

func newState(ctx context.Context, cfg *config.Config, log slog.Logger, reg prometheus.Registerer) (*stateBackend, error) {
	if cfg.State.Redis == nil {
		return &stateBackend{
			kind:  "memory",
			state: keypool.NewMemoryState(nil, cfg.State.RequestTTL.Std()),
			ready: func() error { return nil },
			close: func() {},
		}, nil
	}
	return newRedisState(ctx, cfg, log, reg)
}
