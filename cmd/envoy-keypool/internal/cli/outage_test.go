package cli_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/cli"
	"github.com/envoy-keypool/envoy-keypool/internal/fakeclock"
	"github.com/envoy-keypool/envoy-keypool/keypool"
)

// unreachableState applies operator overrides locally and reports the shared state
// out of reach, as Redis state does during an outage.
type unreachableState struct{ *keypool.MemoryState }

func (s unreachableState) Override(ctx context.Context, pool, ref string, c keypool.Cooldown) error {
	if err := s.MemoryState.Override(ctx, pool, ref, c); err != nil {
		return err
	}
	return &keypool.PendingError{Err: errors.New("redis: connection refused")}
}

// What the CLI prints from the admin API's own answers: a change made during a
// shared-state outage says it is pending and why; a key whose cooldown ended and
// is being probed is listed as probing.
func TestKeysShowsPendingChangesAndProbingKeys(t *testing.T) {
	clock := fakeclock.New(time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC))
	state := unreachableState{keypool.NewMemoryState(clock, 0)}
	pool, err := keypool.NewPool(keypool.PoolOptions{Name: "openai", Clock: clock, State: state, Keys: []keypool.Key{
		keypool.NewKey("openai", "one", keyOne), keypool.NewKey("openai", "two", keyTwo),
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(admin.NewHandler(admin.Options{Pools: []admin.Pool{{Pool: pool, Provider: "openai"}}, Token: adminToken}))
	t.Cleanup(srv.Close)
	env := map[string]string{cli.EnvToken: adminToken, cli.EnvAdmin: srv.URL}

	code, out, errOut := run(t, env, "keys", "disable", "openai", "two")
	if code != 0 || !strings.Contains(out, "note: applied on this replica; the shared state is unreachable") ||
		!strings.Contains(out, "connection refused") {
		t.Fatalf("keys disable during an outage: exit %d\n%s%s", code, out, errOut)
	}

	// Key one cools for a rate limit; once the cooldown ends, a request probes it.
	ctx := context.Background()
	a := keypool.Attempt{RequestID: "r1", Number: 1}
	pk, err := pool.Pick(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	pool.Fail(ctx, a, pk, keypool.Failure{Class: keypool.ClassRateLimited, Status: 429, Hint: keypool.Hint{After: time.Second, Known: true}})
	clock.Advance(2 * time.Second)
	probe := keypool.Attempt{RequestID: "r2", Number: 1}
	if pk, err = pool.Pick(ctx, probe); err != nil || !pk.Probing() {
		t.Fatalf("pick after the cooldown: probing %v, %v; want a probe", pk.Probing(), err)
	}
	code, out, errOut = run(t, env, "keys", "list")
	if code != 0 || !regexp.MustCompile(`(?m)^openai\s+one\s+…1111\s+probing\b`).MatchString(out) {
		t.Fatalf("keys list during a probe: exit %d\n%s%s", code, out, errOut)
	}
}
