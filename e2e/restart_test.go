package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/internal/stack"
)

// healthy reports whether the stand-in currently routes ext_proc streams to addr.
func healthy(tg *target, addr string) bool {
	for _, a := range tg.local.Proxy.HealthyEndpoints("envoy_keypool") {
		if a == addr || "unix:"+a == addr {
			return true
		}
	}
	return false
}

// injections is the number of keys replica i injected since it started.
func injections(t *testing.T, tg *target, i int) int {
	t.Helper()
	resp, err := http.Get(tg.adminURLs[i] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	n := 0
	for _, m := range regexp.MustCompile(`(?m)^envoy_keypool_key_injections_total\{[^}]*\} (\d+)$`).FindAllStringSubmatch(string(body), -1) {
		v, _ := strconv.Atoi(m[1])
		n += v
	}
	return n
}

func TestRollingRestartUnderLoadLosesNoRequest(t *testing.T) {
	tg := startTargetWith(t, func(o *stack.Options) {
		// The default drain delay: long enough for the health checks of the shipped
		// Envoy configuration (interval 5s, timeout 1s) to take a replica out.
		o.DrainDelay = config.DefaultDrainDelay
	})
	if tg.local == nil {
		t.Skip("restarts a replica of the local stack")
	}
	const clients = 16
	l := startLoad(t, tg, clients)
	l.waitMore(t, 50)
	// Every replica in turn, as a rolling update does: SIGTERM, the drain delay, a
	// graceful stop, then the new process on the same address.
	for i := range tg.local.Replicas {
		addr := tg.local.Replica(i).GRPCAddr
		sigterm := time.Now()
		ejected := make(chan time.Duration, 1)
		go func() {
			for healthy(tg, addr) && time.Since(sigterm) < time.Minute {
				time.Sleep(5 * time.Millisecond)
			}
			ejected <- time.Since(sigterm)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		err := tg.local.Restart(ctx, i)
		cancel()
		if err != nil {
			l.finish()
			t.Fatal(err)
		}
		// Measured, not asserted: the drain delay is there so that the first number
		// stays below it.
		t.Logf("replica %d: the stand-in stopped routing to it %s after SIGTERM; stopped and ready again %s after SIGTERM",
			i+1, (<-ejected).Round(time.Millisecond), time.Since(sigterm).Round(time.Millisecond))
		waitFor(t, fmt.Sprintf("the stand-in to route to restarted replica %d", i+1), 30*time.Second, func() bool { return healthy(tg, addr) })
		l.waitMore(t, 100)
		if n := injections(t, tg, i); n == 0 {
			t.Errorf("restarted replica %d served no request", i+1)
		}
	}
	res := l.finish()
	if len(res.errs) > 0 {
		t.Fatalf("%d of %d requests failed across a rolling restart (%s); first: %v",
			len(res.errs), res.ok+int64(len(res.errs)), byStatus(res.errs), res.errs[0])
	}
	t.Logf("%d requests from %d clients, none failed, across a restart of each of %d replicas", res.ok, clients, len(tg.local.Replicas))
}

// TestReplicaKilledUnderLoadFailsOnlyTheRequestsItHeld kills a replica (SIGKILL, no
// drain) under 16 clients. No request that starts after the crash may fail: a stream
// the dead replica cannot take (connection refused, reset before its first answer)
// is opened on the other replica by the ext_proc filter's stream retry policy
// (connect-failure, reset, previous_hosts), until the health checks take the dead
// one out. What no configuration saves is an attempt whose stream the replica had
// already answered (its key injected, the provider's answer awaited): Envoy fails
// the stream's request with status_on_error (500) the moment the stream breaks
// (source/extensions/filters/http/ext_proc/ext_proc.cc, Filter::onGrpcError; a
// stream that has received response headers is never retried,
// source/common/router/router.cc). Those requests, in flight at the crash, are the
// only ones allowed to fail, and only with that 500.
func TestReplicaKilledUnderLoadFailsOnlyTheRequestsItHeld(t *testing.T) {
	tg := startTarget(t)
	if tg.local == nil {
		t.Skip("kills a replica of the local stack")
	}
	const clients = 16
	var killedAt atomic.Pointer[time.Time]
	var (
		mu    sync.Mutex
		after []error // failures of requests started after the kill
		held  []error // failures of requests in flight at the kill
	)
	var done, startedAfter atomic.Int64
	stop := make(chan struct{})
	finished := make(chan int64, 1)
	go func() {
		ok, _ := loadEach(t, tg, clients, stop, func(started time.Time, err error) {
			done.Add(1)
			isAfter := false
			if at := killedAt.Load(); at != nil && started.After(*at) {
				isAfter = true
				startedAfter.Add(1)
			}
			if err == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if isAfter {
				after = append(after, err)
			} else {
				held = append(held, err)
			}
		})
		finished <- ok
	}()
	waitFor(t, "50 requests", 60*time.Second, func() bool { return done.Load() >= 50 })
	dead := tg.local.Replica(0).GRPCAddr
	now := time.Now()
	killedAt.Store(&now)
	tg.killReplica(t, 0)
	waitFor(t, "the stand-in's health checks to drop the killed replica", 30*time.Second, func() bool { return !healthy(tg, dead) })
	from := done.Load()
	waitFor(t, "100 more requests", 60*time.Second, func() bool { return done.Load() >= from+100 })
	close(stop)
	ok := <-finished
	mu.Lock()
	defer mu.Unlock()
	if len(after) > 0 {
		t.Errorf("%d requests started after the crash failed (%s); first: %v", len(after), byStatus(after), after[0])
	}
	for _, err := range held {
		if !regexp.MustCompile(`\b500\b`).MatchString(err.Error()) {
			t.Errorf("a request in flight at the crash failed with other than Envoy's status_on_error 500: %v", err)
		}
	}
	t.Logf("%d requests succeeded; %d in flight at the crash failed (%s); %d started after the crash, %d failed",
		ok, len(held), byStatus(held), startedAfter.Load(), len(after))
}

// byStatus counts failed requests by the status the client got ("504: 3, 500: 1"):
// a 504 is Envoy's message_timeout (a slow replica), a 500 a broken ext_proc stream.
func byStatus(errs []error) string {
	counts := map[string]int{}
	for _, err := range errs {
		m := regexp.MustCompile(`\b([45]\d\d)\b`).FindString(err.Error())
		if m == "" {
			m = "no status"
		}
		counts[m]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %d", k, counts[k])
	}
	return b.String()
}
