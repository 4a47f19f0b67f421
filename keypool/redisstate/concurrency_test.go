package redisstate

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/keypool"
)

func TestTwoReplicasManyGoroutines(t *testing.T) {
	srv := startRedis(t)
	a := newHealthyReplica(t, Options{URL: srv.URL()})
	b := newHealthyReplica(t, Options{URL: srv.URL()})
	keys := testKeys("openai", 6)
	pools := []*keypool.Pool{newPool(t, "openai", keys, a, nil), newPool(t, "openai", keys, b, nil)}
	ctx := context.Background()

	const workers, requests = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*requests)
	for w := range 2 * workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range requests {
				id := fmt.Sprintf("w%d-r%d", w, i)
				seen := map[string]bool{}
				for n := 1; n <= len(keys)+1; n++ {
					p := pools[(w+n)%2]
					att := keypool.Attempt{RequestID: id, Number: n}
					k, err := p.Pick(ctx, att)
					if errors.Is(err, keypool.ErrExhausted) {
						break
					}
					if err != nil {
						errs <- fmt.Errorf("%s attempt %d: %w", id, n, err)
						break
					}
					if seen[k.ID()] {
						errs <- fmt.Errorf("%s attempt %d got %s again", id, n, k.ID())
					}
					seen[k.ID()] = true
					switch r := rng.IntN(10); {
					case r < 4:
						p.FailKey(ctx, att, k.Key, keypool.ReasonRateLimited, keypool.Hint{After: time.Duration(1+rng.IntN(3)) * time.Second, Known: true})
						continue
					case r == 4:
						p.FailKey(ctx, att, k.Key, keypool.ReasonForbidden, keypool.Hint{})
						continue
					case r == 5 && i%10 == 0:
						if err := p.Enable(ctx, k.ID()); err != nil {
							errs <- err
						}
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Both views converge on Redis.
	lay := layout{DefaultPrefix}
	for _, k := range keys {
		waitFor(t, "both replicas agree with Redis on "+k.ID(), func() bool {
			now := time.Now()
			raw, err := srv.Client().Get(ctx, lay.cooldown("openai", k.Ref())).Result()
			st, ok := parseStored(raw)
			inRedis := err == nil && ok && st.c.ActiveAt(now)
			for _, r := range []*replica{a, b} {
				c := r.Cooldown("openai", k.Ref())
				if inRedis && !sameCooldown(c, st.c) || !inRedis && c.ActiveAt(now) {
					return false
				}
			}
			return true
		})
	}
	if a.Ready() != nil || b.Ready() != nil {
		t.Errorf("a replica went degraded under load: A %v, B %v", a.Ready(), b.Ready())
	}
}
