package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// loadRun is load() running in the background, counting what it did.
type loadRun struct {
	done   atomic.Int64
	stop   chan struct{}
	result chan loadResult
}

type loadResult struct {
	ok   int64
	errs []error
}

func startLoad(t *testing.T, tg *target, workers int) *loadRun {
	l := &loadRun{stop: make(chan struct{}), result: make(chan loadResult, 1)}
	go func() {
		ok, errs := load(t, tg, workers, l.stop, func(bool, time.Time) { l.done.Add(1) })
		l.result <- loadResult{ok, errs}
	}()
	return l
}

// waitMore waits until n more requests than now have ended.
func (l *loadRun) waitMore(t *testing.T, n int64) {
	t.Helper()
	from := l.done.Load()
	waitFor(t, fmt.Sprintf("%d more requests", n), 60*time.Second, func() bool { return l.done.Load() >= from+n })
}

func (l *loadRun) finish() loadResult {
	close(l.stop)
	return <-l.result
}

// load runs workers clients, each sending requests one after the other until stop
// is closed, and returns how many succeeded and the errors of those that failed.
// onDone, when set, hears of each request: whether it succeeded and when it started.
func load(t *testing.T, tg *target, workers int, stop <-chan struct{}, onDone func(ok bool, started time.Time)) (int64, []error) {
	t.Helper()
	var mu sync.Mutex
	var errs []error
	ok, _ := loadEach(t, tg, workers, stop, func(started time.Time, err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		if onDone != nil {
			onDone(err == nil, started)
		}
	})
	return ok, errs
}

// loadEach is load() reporting every request: when it started and how it ended.
func loadEach(t *testing.T, tg *target, workers int, stop <-chan struct{}, each func(started time.Time, err error)) (int64, int64) {
	t.Helper()
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	cases := chatCases()
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c := cases[(w+i)%len(cases)]
				started := time.Now()
				text, err := c.chat(testCtx(t), tg)
				if err == nil && text != mockprovider.ReplyText {
					err = fmt.Errorf("reply %q", text)
				}
				if err != nil {
					failed.Add(1)
					err = fmt.Errorf("%s: %w", c.name, err)
				} else {
					ok.Add(1)
				}
				each(started, err)
			}
		})
	}
	wg.Wait()
	return ok.Load(), failed.Load()
}
