package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// One client's request that no key may serve (a model no key has access to, a
// request too large for every key's limit) fails over through the whole pool and
// the client gets the provider's own answer; the pool stays whole for everyone else.
func TestOneClientsOwnFailureFailsOverWithoutCoolingThePool(t *testing.T) {
	tests := []struct {
		name       string
		failure    string
		wantStatus int
	}{
		{"403 model access", mockprovider.FailureForbidden, 403},
		{"429 request too large", mockprovider.FailureRequestTooLarge, 429},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Two replicas with Redis: the stand-in sends each attempt to the next
			// replica, so the request's tried keys are shared through Redis.
			tg := startFlowTarget(t, flowOptions{replicas: 2, redis: true, pools: []map[string]any{
				flowPool("sem", "openai", 3, map[string]any{"cooldowns": shortCooldowns()}),
			}})
			for i := range 3 {
				tg.programKey(t, "sem", i, mockprovider.Behavior{Models: map[string]mockprovider.Behavior{
					"gpt-restricted": {Failure: tt.failure},
				}})
			}
			got := tg.chatRequest(t, "sem", "gpt-restricted", "Bearer "+placeholderKey)
			var body struct {
				Error struct{ Type, Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal([]byte(got.body), &body); err != nil || got.status != tt.wantStatus {
				t.Fatalf("client got %d %s, want the provider's %d (provider saw keys %v)", got.status, got.body, tt.wantStatus, tg.attempts(t, "sem"))
			}
			if got.header.Get("x-keypool-retry") != "" || body.Error.Code == "no_keys_available" || body.Error.Code == "upstream_keys_rejected" {
				t.Errorf("the answer is envoy-keypool's, not the provider's: %s", got.body)
			}
			if a := tg.attempts(t, "sem"); !sameInts(a, []int{0, 1, 2}) {
				t.Fatalf("provider saw keys %v, want every key once in order", a)
			}
			// Another client's request is served by key 1 at once.
			for range 3 {
				tg.clearRequests(t)
				if got := tg.chatRequest(t, "sem", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
					t.Fatalf("another client's request: %d %s", got.status, got.body)
				}
				if a := tg.attempts(t, "sem"); !sameInts(a, []int{0}) {
					t.Fatalf("another client's request went to keys %v, want key 1 at once", a)
				}
			}
		})
	}
}

// A failure that could be the request's cools the key only when three distinct
// requests saw it on that key within the window, counted across replicas.
func TestThreeAgreeingRequestsCoolTheKey(t *testing.T) {
	// Two replicas with Redis; "other" is a one-key pool whose one-attempt requests
	// move the stand-in's round-robin on, so that key 1's 403s land on both replicas
	// (each request to "sem" takes two attempts: without them all three would land
	// on the same replica).
	tg := startFlowTarget(t, flowOptions{replicas: 2, redis: true, pools: []map[string]any{
		flowPool("sem", "openai", 2, map[string]any{"cooldowns": shortCooldowns(),
			"corroborate": map[string]any{"requests": 3, "window": "10s"}}),
		flowPool("other", "openai", 1, nil),
	}})
	tg.programKey(t, "sem", 0, mockprovider.Behavior{Failure: mockprovider.FailureForbidden})
	for i := range 3 {
		tg.clearRequests(t)
		if got := tg.chatRequest(t, "sem", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
			t.Fatalf("request %d: %d %s, want key 2's answer", i+1, got.status, got.body)
		}
		if a := tg.attempts(t, "sem"); !sameInts(a, []int{0, 1}) {
			t.Fatalf("request %d went to keys %v, want key 1 then key 2", i+1, a)
		}
		if i == 2 {
			break
		}
		for r := range tg.adminURLs {
			if k := tg.flowKeys(t, r, "sem")[0]; k.Phase != "available" {
				t.Fatalf("after %d agreeing requests replica %d has key 1 %s, want available", i+1, r+1, k.Phase)
			}
		}
		if got := tg.chatRequest(t, "other", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
			t.Fatalf("request to the other pool: %d %s", got.status, got.body)
		}
	}
	// Neither replica saw three 403s on its own.
	const seen = `envoy_keypool_key_failures_total{action="corroborate",class="forbidden",key="sem-1",pool="sem"}`
	var total float64
	for r := range tg.adminURLs {
		n := tg.replicaMetric(t, r, seen)
		if n == 0 || n >= 3 {
			t.Fatalf("replica %d saw %v of the three 403s of key 1, want some but not all: the test does not span the replicas", r+1, n)
		}
		total += n
	}
	if total != 3 {
		t.Fatalf("the replicas saw %v 403s of key 1, want 3", total)
	}
	for r := range tg.adminURLs {
		waitFor(t, fmt.Sprintf("replica %d to see key 1 cooling for forbidden", r+1), 5*time.Second, func() bool {
			k := tg.flowKeys(t, r, "sem")[0]
			return k.Phase == "cooling" && k.Reason == "forbidden"
		})
	}
	for range 2 { // one request on each replica
		tg.clearRequests(t)
		if got := tg.chatRequest(t, "sem", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
			t.Fatalf("a request after the cooldown began: %d %s", got.status, got.body)
		}
		if a := tg.attempts(t, "sem"); !sameInts(a, []int{1}) {
			t.Fatalf("a request after three agreeing ones went to keys %v, want key 2 at once", a)
		}
	}
}

// A rate limit cools the key for the wait the provider asked for.
func TestRateLimitCoolsForItsRetryAfter(t *testing.T) {
	tg := startFlowTarget(t, flowOptions{replicas: 2, redis: true, pools: []map[string]any{
		flowPool("sem", "openai", 3, nil),
	}})
	tg.programKey(t, "sem", 1, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited,
		Headers: map[string]string{"Retry-After": "45"}})
	tg.programKey(t, "sem", 0, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited,
		Headers: map[string]string{"Retry-After": "45"}})
	if got := tg.chatRequest(t, "sem", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
		t.Fatalf("client got %d %s, want key 3's answer", got.status, got.body)
	}
	for i := range tg.adminURLs {
		// The generated Envoy configuration reads the model from the JSON body: a rate
		// limit cools the key for that model.
		waitFor(t, fmt.Sprintf("replica %d to see keys 1 and 2 cooling", i+1), 5*time.Second, func() bool {
			ks := tg.flowKeys(t, i, "sem")
			return ks[0].scope("gpt-4o-mini").Phase == "cooling" && ks[1].scope("gpt-4o-mini").Phase == "cooling"
		})
		for _, k := range tg.flowKeys(t, i, "sem")[:2] {
			if sc := k.scope("gpt-4o-mini"); sc.Reason != "rate_limited" || sc.Remaining > 45 || sc.Remaining < 40 {
				t.Errorf("replica %d: %s is %+v, want cooling 45s for rate_limited", i+1, k.ID, sc)
			}
		}
	}
}

// When a cooldown ends, one request at a time probes the key, across replicas; the
// probe's answer decides for everyone.
func TestHalfOpenProbeAcrossReplicas(t *testing.T) {
	tests := []struct {
		name    string
		succeed bool
	}{{"probe succeeds", true}, {"probe fails", false}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := startFlowTarget(t, flowOptions{replicas: 2, redis: true, pools: []map[string]any{
				flowPool("half", "openai", 2, map[string]any{"cooldowns": shortCooldowns(), "probe_lease": "10s"}),
			}})
			limited := mockprovider.Behavior{Failure: mockprovider.FailureRateLimited, Headers: map[string]string{"Retry-After": "2"}}
			tg.programKey(t, "half", 0, limited)
			tg.chatRequest(t, "half", "gpt-4o-mini", "Bearer "+placeholderKey)
			for i := range tg.adminURLs {
				waitFor(t, fmt.Sprintf("replica %d to see key 1 cooling", i+1), 5*time.Second, func() bool {
					return tg.flowKeys(t, i, "half")[0].scope("gpt-4o-mini").Phase == "cooling"
				})
			}
			// The probe's answer takes a while, so that requests pile up behind it.
			next := mockprovider.Behavior{Delay: 500 * time.Millisecond}
			if !tt.succeed {
				next = limited
				next.Delay = 500 * time.Millisecond
			}
			tg.programKey(t, "half", 0, next)
			// Key 2 answers in 200ms, as a provider takes a while: 32 clients keep
			// about 32 requests in flight without flooding the 2 race-built replicas
			// (an instant answer made ~330 requests a second, and the stand-in's
			// 200ms message timeout 504ed one now and then on a loaded machine).
			tg.programKey(t, "half", 1, mockprovider.Behavior{Delay: 200 * time.Millisecond})
			waitFor(t, "key 1's cooldown to end", 5*time.Second, func() bool {
				return tg.flowKeys(t, 0, "half")[0].scope("gpt-4o-mini").Phase == "probing"
			})
			tg.clearRequests(t)

			// 32 clients without pause until the probe's answer is in. A 504 with no
			// body is the stand-in's ext_proc message_timeout (200ms): on the shared
			// 2-core machine the race-built processes stall past it now and then,
			// most at the burst's start (temporary instrumentation showed
			// envoy-keypool's own handling of each message well under that). The
			// clients retry it at once, as the providers' SDKs retry a 5xx, up to
			// twice; a third 504 in a row, or any other answer, fails the test.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var timeouts atomic.Int64
			clients := concurrentClient(t, 32)
			for range 32 {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						var got answer
						for try := 0; try < 3; try++ {
							got = tg.chatRequestVia(t, clients, "half", "gpt-4o-mini", "Bearer "+placeholderKey)
							if got.status != 504 || got.body != "" {
								break
							}
							timeouts.Add(1)
						}
						if got.status != 200 {
							t.Errorf("a client got %d %s", got.status, got.body)
							return
						}
					}
				})
			}
			result := "failure"
			if tt.succeed {
				result = "success"
			}
			stopClients := sync.OnceFunc(func() { close(stop); wg.Wait() })
			defer stopClients() // also when a wait below fails the test
			probed := `envoy_keypool_probes_total{key="half-1",pool="half",result="` + result + `"}`
			waitFor(t, "a replica to count the probe's "+result, 15*time.Second, func() bool {
				return tg.replicaMetric(t, 0, probed)+tg.replicaMetric(t, 1, probed) >= 1
			})
			stopClients()
			if n := timeouts.Load(); n > 0 {
				t.Logf("%d answers were the stand-in's message-timeout 504 (retried)", n)
			}

			reqs, err := tg.mock.Requests(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d provider requests while the clients ran", len(reqs))
			var first time.Time
			probes := 0
			for _, r := range reqs {
				if tg.keyIndex("half", r.Key) != 0 {
					continue
				}
				if first.IsZero() {
					first = r.Time
				}
				// While the probe is out (its answer takes 500ms), nobody else may try.
				if r.Time.Before(first.Add(400 * time.Millisecond)) {
					probes++
				}
			}
			if probes != 1 {
				t.Fatalf("%d requests reached key 1 while its probe was out, want exactly one", probes)
			}
			if !tt.succeed {
				for i := range tg.adminURLs {
					waitFor(t, fmt.Sprintf("replica %d to see key 1 cooling again", i+1), 5*time.Second, func() bool {
						return tg.flowKeys(t, i, "half")[0].scope("gpt-4o-mini").Phase == "cooling"
					})
					if sc := tg.flowKeys(t, i, "half")[0].scope("gpt-4o-mini"); sc.Span != 4 {
						t.Fatalf("after the probe failed replica %d has key 1 %+v, want cooling for 4s (twice 2s)", i+1, sc)
					}
				}
				return
			}
			// All traffic returns to key 1, on both replicas.
			tg.programKey(t, "half", 0, mockprovider.Behavior{})
			for i := range tg.adminURLs {
				waitFor(t, fmt.Sprintf("replica %d to see key 1 back", i+1), 5*time.Second, func() bool {
					return tg.flowKeys(t, i, "half")[0].scope("gpt-4o-mini").Phase == "available"
				})
			}
			tg.clearRequests(t)
			for range 8 {
				if got := tg.chatRequest(t, "half", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
					t.Fatalf("a request after the probe succeeded: %d %s", got.status, got.body)
				}
			}
			if a := tg.attempts(t, "half"); !sameInts(a, []int{0, 0, 0, 0, 0, 0, 0, 0}) {
				t.Fatalf("after the probe succeeded requests went to keys %v, want key 1 only", a)
			}
		})
	}
}

// A successful answer that says the key's requests are spent takes it out until the
// reset: the next requests go to key 2 without a 429 anywhere, on both replicas.
func TestHeadroomSteersAwayBeforeThe429(t *testing.T) {
	tg := startFlowTarget(t, flowOptions{replicas: 2, redis: true, pools: []map[string]any{
		flowPool("head", "openai", 2, nil),
	}})
	zero := int64(0)
	tg.programKey(t, "head", 0, mockprovider.Behavior{RateLimit: &mockprovider.RateLimit{RemainingRequests: &zero, Reset: 3 * time.Second}})
	if got := tg.chatRequest(t, "head", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
		t.Fatalf("first request: %d %s", got.status, got.body)
	}
	for i := range tg.adminURLs {
		waitFor(t, fmt.Sprintf("replica %d to take key 1 out", i+1), 5*time.Second, func() bool {
			sc := tg.flowKeys(t, i, "head")[0].scope("gpt-4o-mini")
			return sc.Phase == "cooling" && sc.Reason == "depleted"
		})
	}
	// Key 1 would now answer 429, as a spent key does: nobody may pay for it.
	tg.programKey(t, "head", 0, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited,
		Headers: map[string]string{"Retry-After": "3"}})
	tg.clearRequests(t)
	for range 6 { // both replicas serve
		if got := tg.chatRequest(t, "head", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
			t.Fatalf("request while key 1 is out: %d %s", got.status, got.body)
		}
	}
	if a := tg.attempts(t, "head"); !sameInts(a, []int{1, 1, 1, 1, 1, 1}) {
		t.Fatalf("requests while key 1 is out went to keys %v, want key 2 only", a)
	}
	// One replica read the spent headroom; both steered away from key 1.
	var depletions float64
	for i := range tg.adminURLs {
		depletions += tg.replicaMetric(t, i, `envoy_keypool_headroom_depletions_total{pool="head"}`)
		if n := tg.replicaMetric(t, i, `envoy_keypool_headroom_steered_picks_total{pool="head"}`); n == 0 {
			t.Errorf("replica %d counted no pick steered away from key 1", i+1)
		}
	}
	if depletions != 1 {
		t.Errorf("the replicas counted %v depletions of key 1, want 1 (one answer read, the other replica told through Redis)", depletions)
	}
	// After the reset key 1 serves again.
	tg.programKey(t, "head", 0, mockprovider.Behavior{})
	waitFor(t, "key 1 to serve again after its reset", 10*time.Second, func() bool {
		tg.clearRequests(t)
		tg.chatRequest(t, "head", "gpt-4o-mini", "Bearer "+placeholderKey)
		return sameInts(tg.attempts(t, "head"), []int{0})
	})
	// On both replicas, once each has heard that key 1 is back.
	for i := range tg.adminURLs {
		waitFor(t, fmt.Sprintf("replica %d to list key 1 back", i+1), 5*time.Second, func() bool {
			return tg.flowKeys(t, i, "head")[0].scope("gpt-4o-mini").Phase == "available"
		})
	}
	tg.clearRequests(t)
	for range 2 {
		tg.chatRequest(t, "head", "gpt-4o-mini", "Bearer "+placeholderKey)
	}
	if a := tg.attempts(t, "head"); !sameInts(a, []int{0, 0}) {
		t.Fatalf("after the reset requests went to keys %v, want key 1 on both replicas", a)
	}
}

// Rate limits are per model: key 1 limited on model A still serves model B, and
// model A's exhaustion answers with model A's Retry-After while B is served.
func TestRateLimitsCoolPerModel(t *testing.T) {
	// Gemini names the model in the path, which envoy-keypool reads itself.
	tg := startFlowTarget(t, flowOptions{replicas: 2, redis: true, pools: []map[string]any{
		flowPool("gem", "gemini", 2, nil),
	}})
	const modelA, modelB = "gemini-2.0-flash", "gemini-2.5-pro"
	limitedOnA := func(wait string) mockprovider.Behavior {
		return mockprovider.Behavior{Models: map[string]mockprovider.Behavior{
			modelA: {Failure: mockprovider.FailureRateLimited, Headers: map[string]string{"Retry-After": wait}},
		}}
	}
	tg.programKey(t, "gem", 0, limitedOnA("40"))
	if got := tg.geminiRequest(t, "gem", modelA); got.status != 200 {
		t.Fatalf("model A: %d %s, want key 2's answer", got.status, got.body)
	}
	for i := range tg.adminURLs {
		waitFor(t, fmt.Sprintf("replica %d to see key 1 cooling for model A", i+1), 5*time.Second, func() bool {
			k := tg.flowKeys(t, i, "gem")[0]
			return k.Phase == "available" && len(k.Models) == 1 && k.Models[0].Model == modelA && k.Models[0].Phase == "cooling"
		})
	}
	for range 4 {
		tg.clearRequests(t)
		if got := tg.geminiRequest(t, "gem", modelB); got.status != 200 {
			t.Fatalf("model B: %d %s", got.status, got.body)
		}
		if a := tg.attempts(t, "gem"); !sameInts(a, []int{0}) {
			t.Fatalf("model B went to keys %v, want key 1 at once", a)
		}
	}
	// Key 2 limited on model A too: A is exhausted, with the wait of the soonest key.
	tg.programKey(t, "gem", 1, limitedOnA("20"))
	got := tg.geminiRequest(t, "gem", modelA)
	ra, _ := strconv.Atoi(got.header.Get("Retry-After"))
	if got.status != 429 || ra < 18 || ra > 20 {
		t.Fatalf("model A with both keys limited: %d, Retry-After %q; want 429 with about 20s", got.status, got.header.Get("Retry-After"))
	}
	tg.clearRequests(t)
	if got := tg.geminiRequest(t, "gem", modelB); got.status != 200 {
		t.Fatalf("model B while A is exhausted: %d %s", got.status, got.body)
	}
}

// A byok: allow pool: a request without a key of its own is the pool's and fails
// over; one with the client's own key passes untouched and never fails over.
func TestBYOKPoolFailsOverItsOwnRequestsOnly(t *testing.T) {
	tg := startFlowTarget(t, flowOptions{replicas: 2, redis: true, pools: []map[string]any{
		flowPool("byok", "openai", 2, map[string]any{"byok": "allow"}),
	}})
	tg.programKey(t, "byok", 0, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited,
		Headers: map[string]string{"Retry-After": "30"}})
	for range 2 { // a request on each replica
		tg.clearRequests(t)
		if got := tg.chatRequest(t, "byok", "gpt-4o-mini", ""); got.status != 200 {
			t.Fatalf("request without a client key: %d %s, want key 2's answer", got.status, got.body)
		}
		a := tg.attempts(t, "byok")
		if !sameInts(a, []int{0, 1}) && !sameInts(a, []int{1}) {
			t.Fatalf("request without a client key went to keys %v, want key 1 then key 2 (or key 2 once key 1 cools)", a)
		}
	}
	const own = "client-own-key-not-real-0123456789abcdef"
	if err := tg.mock.SetBehavior(testCtx(t), own, mockprovider.Behavior{Failure: mockprovider.FailureRateLimited,
		Headers: map[string]string{"Retry-After": "30"}}); err != nil {
		t.Fatal(err)
	}
	tg.clearRequests(t)
	got := tg.chatRequest(t, "byok", "gpt-4o-mini", "Bearer "+own)
	if got.status != 429 {
		t.Fatalf("request with its own rate-limited key: %d %s, want the provider's 429", got.status, got.body)
	}
	reqs, err := tg.mock.Requests(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 1 || reqs[0].Key != own {
		t.Fatalf("provider saw %d requests, want the client's own key once, untouched", len(reqs))
	}
	if ks := tg.flowKeys(t, 0, "byok"); ks[1].Phase != "available" {
		t.Errorf("the client's own 429 changed the pool: key 2 is %s", ks[1].Phase)
	}
}

// Weighted pools spread requests by weight; tiered pools use a tier only when the
// ones before it are out.
func TestStrategies(t *testing.T) {
	// One replica with in-memory state: what one pool's strategy does, on its own.
	tg := startFlowTarget(t, flowOptions{replicas: 1, pools: []map[string]any{
		weightedPool("weighted", "weighted", []int{3, 1}, nil),
		weightedPool("tiered", "tiered", []int{1, 1, 1}, []int{0, 0, 1}),
	}})
	const n = 200
	for range n {
		if got := tg.chatRequest(t, "weighted", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
			t.Fatalf("weighted: %d %s", got.status, got.body)
		}
	}
	counts := map[int]int{}
	for _, k := range tg.attempts(t, "weighted") {
		counts[k]++
	}
	if share := float64(counts[0]) / n; share < 0.65 || share > 0.85 {
		t.Errorf("weighted 3:1: key 1 served %d of %d requests, want about 75%%", counts[0], n)
	}

	tg.clearRequests(t)
	for range 20 {
		tg.chatRequest(t, "tiered", "gpt-4o-mini", "Bearer "+placeholderKey)
	}
	for _, k := range tg.attempts(t, "tiered") {
		if k == 2 {
			t.Fatal("tier 1 served while tier 0 had keys")
		}
	}
	for i := range 2 {
		tg.programKey(t, "tiered", i, mockprovider.Behavior{Failure: mockprovider.FailureUnauthorized})
	}
	tg.clearRequests(t)
	if got := tg.chatRequest(t, "tiered", "gpt-4o-mini", "Bearer "+placeholderKey); got.status != 200 {
		t.Fatalf("tiered with tier 0 unauthorized: %d %s (keys %v)", got.status, got.body, tg.attempts(t, "tiered"))
	}
	if a := tg.attempts(t, "tiered"); len(a) == 0 || a[len(a)-1] != 2 {
		t.Fatalf("tiered with tier 0 unauthorized went to keys %v, want tier 1's key last", a)
	}
}

func weightedPool(name, strategy string, weights, tiers []int) map[string]any {
	p := flowPool(name, "openai", len(weights), map[string]any{"strategy": strategy})
	for i, k := range p["keys"].([]any) {
		k.(map[string]any)["weight"] = weights[i]
		if tiers != nil {
			k.(map[string]any)["tier"] = tiers[i]
		}
	}
	return p
}
