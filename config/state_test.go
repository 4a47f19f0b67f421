package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/keypool/redisstate"
)

// The Redis timeout's bound is redisstate's MaxTimeout: the configuration
// accepts exactly what the State accepts, so a file that validates also serves.
func TestRedisTimeoutBoundIsTheStates(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		ok      bool
	}{
		{"the bound itself", redisstate.MaxTimeout, true},
		{"just above the bound", redisstate.MaxTimeout + time.Millisecond, false},
		{"Envoy's whole message_timeout", 200 * time.Millisecond, false},
		{"a millisecond", time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := validPool + "state:\n  redis: {url: \"redis://localhost:6379\", timeout: " + tt.timeout.String() + "}\n"
			_, err := config.Read(strings.NewReader(doc), env(map[string]string{"K1": "v"}))
			if tt.ok && err != nil {
				t.Fatalf("timeout %s refused: %v", tt.timeout, err)
			}
			if !tt.ok && (err == nil || !strings.Contains(err.Error(), "state.redis.timeout")) {
				t.Fatalf("timeout %s: err = %v, want one naming state.redis.timeout", tt.timeout, err)
			}
		})
	}
}

func TestRedisDefaultsAreTheStates(t *testing.T) {
	c, err := config.Read(strings.NewReader(validPool+"state:\n  redis: {url: \"redis://localhost:6379\"}\n"),
		env(map[string]string{"K1": "v"}))
	if err != nil {
		t.Fatal(err)
	}
	r := c.State.Redis
	got := []any{r.Prefix, r.Timeout.Std(), r.DialTimeout.Std(), r.HealthCheckInterval.Std()}
	want := []any{redisstate.DefaultPrefix, redisstate.DefaultTimeout, redisstate.DefaultDialTimeout, redisstate.DefaultHealthCheckInterval}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("default %d = %v, want redisstate's %v", i, got[i], want[i])
		}
	}
}
