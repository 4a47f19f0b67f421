package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/envoy-keypool/envoy-keypool/internal/mockprovider"
)

// dashboardMetricsFile lists what deploy/grafana/envoy-keypool.json queries, one
// "metric label,label" a line; the deploy module's tests write it from the
// dashboard with a PromQL parser, so that this module needs none.
const dashboardMetricsFile = repoRoot + "/deploy/grafana/metrics.txt"

// TestDashboardQueriesOnlyWhatTheBinaryExports makes every kind of event the
// dashboard shows happen on the real binary (a failover, an exhaustion, a BYOK
// request, an operator's disable, a probe of a key whose cooldown ended, a
// malformed ext_proc message, a Redis outage and its end), then checks
// that every metric the dashboard queries is in the replicas' /metrics, with every
// label the dashboard groups by: a panel never stays empty because a name changed.
func TestDashboardQueriesOnlyWhatTheBinaryExports(t *testing.T) {
	want := readDashboardMetrics(t)
	tg := startTarget(t)
	if tg.local == nil {
		t.Skip("needs the local stack: it talks to a replica's ext_proc port and stops Redis")
	}
	ctx := testCtx(t)

	// A failover: the first OpenAI key is rate limited, the second serves.
	tg.program(t, "openai", 0, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "120"}})
	if _, err := openaiChat("openai", placeholderKey, false)(ctx, tg); err != nil {
		t.Fatalf("failover: %v", err)
	}
	// An exhaustion: every Anthropic key is rate limited.
	for i := range tg.keys["anthropic"] {
		tg.program(t, "anthropic", i, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "120"}})
	}
	if _, err := anthropicChat(placeholderKey, false)(ctx, tg); err == nil {
		t.Fatal("exhaustion: the request succeeded with every key rate limited")
	}
	// A client's own key on the BYOK pool.
	if _, err := openaiChat("openai-byok", "client-own-openai-key-0123456789", false)(ctx, tg); err != nil {
		t.Fatalf("BYOK: %v", err)
	}
	// An operator takes the last OpenAI key out: a key-wide cooldown.
	last := tg.keys["openai"][len(tg.keys["openai"])-1]
	tg.adminPost(t, 0, "/v1/pools/openai/keys/"+last.ID+"/disable")
	// A probe: the third key is rate limited for a second, then answers again; the
	// first request after its cooldown probes it.
	tg.program(t, "openai", 2, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "1"}})
	tg.program(t, "openai", 1, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "120"}})
	if _, err := openaiChat("openai", placeholderKey, false)(ctx, tg); err != nil {
		t.Fatalf("failover to the fourth key: %v", err)
	}
	if err := tg.mock.ClearBehavior(ctx, tg.keyValue("openai", 2)); err != nil {
		t.Fatal(err)
	}
	// Not fatal: a binary that never probes is reported with the other gaps below.
	pollUntil(10*time.Second, func() bool {
		_, _ = openaiChat("openai", placeholderKey, false)(ctx, tg)
		return scrapeAll(t, tg).has("envoy_keypool_probes_total", []string{"result"}) == nil
	})
	// A malformed message: response headers on a stream that sent no request headers.
	sendOutOfPlaceMessage(t, ctx, tg.local.Replicas[0].GRPCAddr)
	// A Redis outage while a key fails (a mark that cannot reach Redis), then its end.
	tg.killRedis(t)
	tg.program(t, "openai", 2, mockprovider.Behavior{Status: 429, Headers: map[string]string{"Retry-After": "120"}})
	for range 2 { // both replicas see the failure, whichever the stand-in picks
		_, _ = openaiChat("openai", placeholderKey, false)(ctx, tg)
	}
	tg.restartRedis(t)
	for i := range tg.adminURLs {
		waitFor(t, fmt.Sprintf("replica %d ready again", i+1), 20*time.Second, func() bool { return tg.readyz(i) == "ready" })
	}

	// Metrics are read at scrape time; the deadline only covers the replicas'
	// background work (resync after Redis returned).
	var missing []string
	pollUntil(10*time.Second, func() bool {
		got := scrapeAll(t, tg)
		missing = missing[:0]
		for _, m := range want {
			if err := got.has(m.name, m.labels); err != nil {
				missing = append(missing, err.Error())
			}
		}
		return len(missing) == 0
	})
	if len(missing) > 0 {
		t.Fatalf("the dashboard queries what /metrics lacks:\n%s", strings.Join(missing, "\n"))
	}
}

// pollUntil checks cond every 100ms until it holds or d has passed, and reports
// whether it held.
func pollUntil(d time.Duration, cond func() bool) bool {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(d); !cond(); <-tick.C {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// adminPost calls replica i's admin API with the admin token.
func (tg *target) adminPost(t *testing.T, i int, path string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, tg.adminURLs[i]+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tg.adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST %s: %s", path, resp.Status)
	}
}

type dashboardMetric struct {
	name   string
	labels []string
}

func readDashboardMetrics(t *testing.T) []dashboardMetric {
	t.Helper()
	f, err := os.Open(dashboardMetricsFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []dashboardMetric
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, ls, _ := strings.Cut(line, " ")
		m := dashboardMetric{name: name}
		if ls = strings.TrimSpace(ls); ls != "" {
			m.labels = strings.Split(ls, ",")
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil || len(out) == 0 {
		t.Fatalf("%s: %d metrics, %v", dashboardMetricsFile, len(out), err)
	}
	return out
}

// exported maps each sample name (a histogram's _bucket, _sum and _count included)
// to the label names its samples carry, across every replica.
type exported map[string][][]string

func (e exported) has(name string, labels []string) error {
	series, ok := e[name]
	if !ok {
		return fmt.Errorf("%s: not exported", name)
	}
	for _, l := range labels {
		if !slices.ContainsFunc(series, func(ls []string) bool { return slices.Contains(ls, l) }) {
			return fmt.Errorf("%s: no sample has label %q", name, l)
		}
	}
	return nil
}

func scrapeAll(t *testing.T, tg *target) exported {
	t.Helper()
	out := exported{}
	for _, u := range tg.adminURLs {
		resp, err := http.Get(u + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s/metrics: %v", u, err)
		}
		for name, f := range families {
			for _, m := range f.GetMetric() {
				var ls []string
				for _, lp := range m.GetLabel() {
					ls = append(ls, lp.GetName())
				}
				names := []string{name}
				if f.GetType() == dto.MetricType_HISTOGRAM {
					names = []string{name + "_bucket", name + "_sum", name + "_count"}
				}
				for _, n := range names {
					out[n] = append(out[n], ls)
				}
			}
		}
	}
	return out
}

// sendOutOfPlaceMessage opens an ext_proc stream as Envoy's filter for the openai
// pool would, and sends response headers first. envoy-keypool must answer it with a
// well-formed message and count it.
func sendOutOfPlaceMessage(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-keypool-pool", "openai")
	stream, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":status", RawValue: []byte("200")},
		}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("an out-of-place message got no answer: %v", err)
	}
	if resp.GetResponseHeaders() == nil && resp.GetImmediateResponse() == nil {
		t.Errorf("answer %v to response headers, want a response_headers answer or an immediate response", resp)
	}
	_ = stream.CloseSend()
}
