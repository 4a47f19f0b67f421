package deploy

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/statetimeline"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

const (
	dashboardFile = "grafana/envoy-keypool.json"
	// metricsFile lists every metric (and the labels) the dashboard queries, one
	// "name label,label" a line. It is written from the dashboard by this test
	// (-update) and read by e2e/dashboard_test.go in the main module, which checks
	// each against /metrics of the real binary after a failover: that test stays
	// free of the PromQL parser.
	metricsFile = "grafana/metrics.txt"
)

var update = flag.Bool("update", false, "rewrite the generated files: "+metricsFile+" from the dashboard, the examples' Envoy fragments from the generator")

// grafanaDashboard is the part of the dashboard JSON these tests walk.
type grafanaDashboard struct {
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource json.RawMessage          `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) ([]byte, grafanaDashboard) {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return raw, d
}

// grafanaVariables are expanded to something PromQL parses, as Grafana does.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$pool", ".*")

func TestDashboardIsAValidGrafanaDashboard(t *testing.T) {
	raw, d := loadDashboard(t)
	t.Run("it decodes strictly into Grafana's dashboard schema", func(t *testing.T) {
		// The panel and query kinds the dashboard uses; a panel of another kind fails
		// to decode until it is registered here.
		rt := cog.NewRuntime()
		rt.RegisterPanelcfgVariant(stat.VariantConfig())
		rt.RegisterPanelcfgVariant(statetimeline.VariantConfig())
		rt.RegisterPanelcfgVariant(timeseries.VariantConfig())
		rt.RegisterDataqueryVariant(prometheus.VariantConfig())
		var sdk dashboard.Dashboard
		err := sdk.UnmarshalJSONStrict(raw)
		// v0.0.22 returns an empty cog.BuildErrors as a non-nil error on success.
		if be, ok := err.(cog.BuildErrors); ok && len(be) == 0 {
			err = nil
		}
		if err != nil {
			t.Fatal(err)
		}
		if sdk.Uid == nil || *sdk.Uid != "envoy-keypool" || sdk.Title == nil {
			t.Errorf("uid %v title %v: want a stable uid, so that imports update it", sdk.Uid, sdk.Title)
		}
	})
	t.Run("every query parses as PromQL", func(t *testing.T) {
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				if _, err := promQL.ParseExpr(grafanaVariables.Replace(tg.Expr)); err != nil {
					t.Errorf("panel %q query %s: %v", p.Title, tg.RefID, err)
				}
			}
		}
	})
	t.Run("panels have unique ids and do not overlap", func(t *testing.T) {
		ids := map[int]string{}
		for i, p := range d.Panels {
			if other, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", p.Title, other, p.ID)
			}
			ids[p.ID] = p.Title
			for _, q := range d.Panels[:i] {
				g, h := p.GridPos, q.GridPos
				if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
					t.Errorf("panels %q and %q overlap", p.Title, q.Title)
				}
			}
			if g := p.GridPos; g.X+g.W > 24 {
				t.Errorf("panel %q is wider than the dashboard", p.Title)
			}
		}
	})
	t.Run("every panel reads the chosen data source", func(t *testing.T) {
		for _, p := range d.Panels {
			if p.Type != "row" && !strings.Contains(string(p.Datasource), "${datasource}") {
				t.Errorf("panel %q data source %s, want ${datasource}: a fixed uid breaks the dashboard on import", p.Title, p.Datasource)
			}
		}
	})
	t.Run("it covers what operators look at", func(t *testing.T) {
		got := dashboardMetrics(t, d)
		for _, m := range []string{
			"envoy_keypool_key_available",           // keys by state
			"envoy_keypool_key_cooldown_seconds",    // cooling keys by reason
			"envoy_keypool_key_failures_total",      // failures by class
			"envoy_keypool_exhausted_total",         // exhaustions
			"envoy_keypool_request_attempts_bucket", // attempts per request
			"envoy_keypool_redis_up",                // Redis health
			"envoy_keypool_redis_errors_total",
		} {
			if _, ok := got[m]; !ok {
				t.Errorf("no panel queries %s", m)
			}
		}
	})
}

// TestDashboardMetricsFileIsCurrent: metrics.txt is what the dashboard queries.
// Regenerate with: go test -run TestDashboardMetricsFileIsCurrent -update .
func TestDashboardMetricsFileIsCurrent(t *testing.T) {
	_, d := loadDashboard(t)
	want := formatMetrics(dashboardMetrics(t, d))
	if *update {
		if err := os.WriteFile(metricsFile, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(metricsFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s is not what the dashboard queries; run go test -run %s -update .\ngot:\n%s\nwant:\n%s", metricsFile, t.Name(), got, want)
	}
}

// dashboardMetrics returns every metric name the dashboard's queries (and its
// variables) select, with the labels the queries group by or match on.
func dashboardMetrics(t *testing.T, d grafanaDashboard) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			// label_values(METRIC, LABEL): METRIC must carry LABEL.
			def := strings.TrimSuffix(strings.TrimPrefix(v.Definition, "label_values("), ")")
			metric, label, ok := strings.Cut(def, ",")
			if !ok {
				t.Fatalf("variable %s: %q is not label_values(metric, label)", v.Name, v.Definition)
			}
			addLabels(out, strings.TrimSpace(metric), strings.TrimSpace(label))
		}
	}
	for _, e := range exprs {
		expr, err := promQL.ParseExpr(grafanaVariables.Replace(e))
		if err != nil {
			continue // reported by the PromQL test
		}
		// Labels are attributed to every metric below the aggregation that names them.
		var walk func(n parser.Node, grouping []string)
		walk = func(n parser.Node, grouping []string) {
			switch n := n.(type) {
			case *parser.AggregateExpr:
				if !n.Without {
					grouping = append(slices.Clone(grouping), n.Grouping...)
				}
			case *parser.VectorSelector:
				for _, m := range n.LabelMatchers {
					if m.Name != labels.MetricName {
						grouping = append(slices.Clone(grouping), m.Name)
					}
				}
				var ls []string
				for _, l := range grouping {
					// le comes from the histogram itself, instance from Prometheus.
					if l != "le" && l != "instance" {
						ls = append(ls, l)
					}
				}
				addLabels(out, n.Name, ls...)
				return
			}
			for _, c := range parser.Children(n) {
				walk(c, grouping)
			}
		}
		walk(expr, nil)
	}
	return out
}

func addLabels(m map[string][]string, metric string, ls ...string) {
	cur := m[metric]
	for _, l := range ls {
		if !slices.Contains(cur, l) {
			cur = append(cur, l)
		}
	}
	sort.Strings(cur)
	m[metric] = cur
}

func formatMetrics(m map[string][]string) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("# Metrics and labels deploy/grafana/envoy-keypool.json queries: written by\n")
	b.WriteString("# deploy's TestDashboardMetricsFileIsCurrent -update, checked against /metrics by e2e/dashboard_test.go.\n")
	for _, n := range names {
		fmt.Fprintf(&b, "%s %s\n", n, strings.Join(m[n], ","))
	}
	return b.String()
}

// promQL parses queries as Prometheus does by default.
var promQL = parser.NewParser(parser.Options{})
