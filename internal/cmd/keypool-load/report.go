package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
)

// report is the tool's output; its JSON form is the --json output.
type report struct {
	Options  reportOptions `json:"options"`
	Keypool  result        `json:"keypool"`
	Baseline *result       `json:"baseline,omitempty"`
	Ratio    *ratios       `json:"ratio,omitempty"`
}

type reportOptions struct {
	Target      string  `json:"target"`
	Pool        string  `json:"pool"`
	Concurrency int     `json:"concurrency"`
	Conns       int     `json:"conns"`
	Duration    string  `json:"duration"`
	FailRate    float64 `json:"fail_rate"`
	FailStatus  int     `json:"fail_status"`
	Baseline    string  `json:"baseline,omitempty"`
}

// result is what one load run counted.
type result struct {
	Elapsed        float64          `json:"elapsed_seconds"`
	Requests       int64            `json:"requests"`
	Streams        int64            `json:"streams"`
	Attempts       int64            `json:"attempts"`
	Retries        int64            `json:"retries"`
	RetriesUsedUp  int64            `json:"retries_used_up"`
	Exhausted      int64            `json:"exhausted"`
	Errors         int64            `json:"errors"`
	ErrorsByCode   map[string]int64 `json:"errors_by_code"`
	RequestsPerSec float64          `json:"requests_per_second"`
	AttemptsPerSec float64          `json:"attempts_per_second"`
	StreamsPerSec  float64          `json:"streams_per_second"`
	P50us          float64          `json:"p50_us"`
	P90us          float64          `json:"p90_us"`
	P99us          float64          `json:"p99_us"`
	MaxUs          float64          `json:"max_us"`
}

// ratios divide envoy-keypool's figures by the pass-through baseline's: below 1 for
// throughput and above 1 for latency mean envoy-keypool costs more than the hop.
type ratios struct {
	AttemptsPerSec float64 `json:"attempts_per_second"`
	P50            float64 `json:"p50"`
	P90            float64 `json:"p90"`
	P99            float64 `json:"p99"`
}

func ratiosOf(k, b result) *ratios {
	return &ratios{
		AttemptsPerSec: div(k.AttemptsPerSec, b.AttemptsPerSec),
		P50:            div(k.P50us, b.P50us),
		P90:            div(k.P90us, b.P90us),
		P99:            div(k.P99us, b.P99us),
	}
}

// div is a/b, or 0 when b is 0 (JSON has no infinity).
func div(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func (r report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func (r report) writeTable(w io.Writer) error {
	o := r.Options
	fmt.Fprintf(w, "keypool-load: %s, pool %q, %d workers on %d conns, %s, fail-rate %g (status %d)\n",
		o.Target, o.Pool, o.Concurrency, o.Conns, o.Duration, o.FailRate, o.FailStatus)
	if o.Baseline != "" {
		fmt.Fprintf(w, "baseline: %s\n", o.Baseline)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	k, b := r.Keypool, r.Baseline
	row := func(name string, kv, bv, ratio string) {
		if b == nil {
			fmt.Fprintf(tw, "%s\t%s\t\n", name, kv)
			return
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", name, kv, bv, ratio)
	}
	rate := func(v float64) string { return fmt.Sprintf("%.0f", v) }
	lat := func(us float64) string { return fmt.Sprintf("%.0fµs", us) }
	count := func(v int64) string { return fmt.Sprint(v) }
	ratio := func(v float64) string { return fmt.Sprintf("%.2f×", v) }
	var bk result
	var rt ratios
	if b != nil {
		bk, rt = *b, *r.Ratio
	}
	row("", "envoy-keypool", "pass-through", "ratio")
	row("requests/s", rate(k.RequestsPerSec), rate(bk.RequestsPerSec), "")
	row("attempts/s", rate(k.AttemptsPerSec), rate(bk.AttemptsPerSec), ratio(rt.AttemptsPerSec))
	row("streams/s", rate(k.StreamsPerSec), rate(bk.StreamsPerSec), "")
	row("stream p50", lat(k.P50us), lat(bk.P50us), ratio(rt.P50))
	row("stream p90", lat(k.P90us), lat(bk.P90us), ratio(rt.P90))
	row("stream p99", lat(k.P99us), lat(bk.P99us), ratio(rt.P99))
	row("retries", count(k.Retries), count(bk.Retries), "")
	row("retries used up", count(k.RetriesUsedUp), count(bk.RetriesUsedUp), "")
	row("exhausted", count(k.Exhausted), count(bk.Exhausted), "")
	row("errors", count(k.Errors), count(bk.Errors), "")
	codes := make([]string, 0, len(k.ErrorsByCode)+len(bk.ErrorsByCode))
	for c := range k.ErrorsByCode {
		codes = append(codes, c)
	}
	for c := range bk.ErrorsByCode {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	for _, c := range slices.Compact(codes) {
		row("  "+c, count(k.ErrorsByCode[c]), count(bk.ErrorsByCode[c]), "")
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
