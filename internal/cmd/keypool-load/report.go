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
	Warmup      string  `json:"warmup"`
	Rate        float64 `json:"rate,omitempty"`
	FailRate    float64 `json:"fail_rate"`
	FailStatus  int     `json:"fail_status"`
	Baseline    string  `json:"baseline,omitempty"`
}

// result is what one load run counted in its measurement window.
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
	// TargetRate is --rate (attempts/s; 0: closed loop) and Missed the attempts the
	// pacer could not hand to a free worker.
	TargetRate float64 `json:"target_rate,omitempty"`
	Missed     int64   `json:"missed,omitempty"`
	// Per stream: from opening it to reading its end.
	P50us float64 `json:"p50_us"`
	P90us float64 `json:"p90_us"`
	P99us float64 `json:"p99_us"`
	MaxUs float64 `json:"max_us"`
	// Per message: from sending it to reading its answer, what Envoy waits for.
	Messages int64   `json:"messages"`
	MsgP50us float64 `json:"message_p50_us"`
	MsgP99us float64 `json:"message_p99_us"`
	MsgMaxUs float64 `json:"message_max_us"`
	// The server's CPU time over the window (--server-pid / --baseline-pid).
	ServerCPUSeconds         *float64 `json:"server_cpu_seconds,omitempty"`
	ServerCores              float64  `json:"server_cores,omitempty"`
	ServerCPUPer1000Attempts float64  `json:"server_cpu_ms_per_1000_attempts,omitempty"`
	// The load tool's own CPU time over the window.
	DriverCPUSeconds float64 `json:"driver_cpu_seconds"`
	DriverCores      float64 `json:"driver_cores"`
	// The CPU the rest of the machine used over the window, in cores: all but
	// the server, the load tool and Redis (with --server-pid). Above a fraction
	// of a core, other work competed with the run and its figures are noise.
	OtherCores *float64 `json:"other_cores,omitempty"`
	// Commands Redis ran over the window (--redis), by name, the meter's INFO left out.
	RedisCommands      map[string]int64 `json:"redis_commands,omitempty"`
	RedisCommandsTotal *int64           `json:"redis_commands_total,omitempty"`
}

// ratios divide envoy-keypool's figures by the pass-through baseline's: below 1 for
// throughput and above 1 for latency and CPU mean envoy-keypool costs more than the
// hop. A ratio whose figures one side lacks is 0.
type ratios struct {
	AttemptsPerSec float64 `json:"attempts_per_second"`
	P50            float64 `json:"p50"`
	P90            float64 `json:"p90"`
	P99            float64 `json:"p99"`
	MsgP50         float64 `json:"message_p50"`
	MsgP99         float64 `json:"message_p99"`
	MsgMax         float64 `json:"message_max"`
	CPUPerAttempt  float64 `json:"cpu_per_attempt,omitempty"`
}

func ratiosOf(k, b result) *ratios {
	r := &ratios{
		AttemptsPerSec: div(k.AttemptsPerSec, b.AttemptsPerSec),
		P50:            div(k.P50us, b.P50us),
		P90:            div(k.P90us, b.P90us),
		P99:            div(k.P99us, b.P99us),
		MsgP50:         div(k.MsgP50us, b.MsgP50us),
		MsgP99:         div(k.MsgP99us, b.MsgP99us),
		MsgMax:         div(k.MsgMaxUs, b.MsgMaxUs),
	}
	if k.ServerCPUSeconds != nil && b.ServerCPUSeconds != nil {
		r.CPUPerAttempt = div(k.ServerCPUPer1000Attempts, b.ServerCPUPer1000Attempts)
	}
	return r
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
	loop := "closed loop"
	if o.Rate > 0 {
		loop = fmt.Sprintf("%g attempts/s", o.Rate)
	}
	fmt.Fprintf(w, "keypool-load: %s, pool %q, %d workers on %d conns, %s after %s warm-up, %s, fail-rate %g (status %d)\n",
		o.Target, o.Pool, o.Concurrency, o.Conns, o.Duration, o.Warmup, loop, o.FailRate, o.FailStatus)
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
	ratio := func(v float64) string {
		if v == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f×", v)
	}
	cpu := func(x result) string {
		if x.ServerCPUSeconds == nil {
			return "-"
		}
		return fmt.Sprintf("%.1fms", x.ServerCPUPer1000Attempts)
	}
	var bk result
	var rt ratios
	if b != nil {
		bk, rt = *b, *r.Ratio
	}
	row("", "envoy-keypool", "pass-through", "ratio")
	row("requests/s", rate(k.RequestsPerSec), rate(bk.RequestsPerSec), "")
	row("attempts/s", rate(k.AttemptsPerSec), rate(bk.AttemptsPerSec), ratio(rt.AttemptsPerSec))
	row("streams/s", rate(k.StreamsPerSec), rate(bk.StreamsPerSec), "")
	if o.Rate > 0 {
		row("missed", count(k.Missed), count(bk.Missed), "")
	}
	row("message p50", lat(k.MsgP50us), lat(bk.MsgP50us), ratio(rt.MsgP50))
	row("message p99", lat(k.MsgP99us), lat(bk.MsgP99us), ratio(rt.MsgP99))
	row("message max", lat(k.MsgMaxUs), lat(bk.MsgMaxUs), ratio(rt.MsgMax))
	row("stream p50", lat(k.P50us), lat(bk.P50us), ratio(rt.P50))
	row("stream p90", lat(k.P90us), lat(bk.P90us), ratio(rt.P90))
	row("stream p99", lat(k.P99us), lat(bk.P99us), ratio(rt.P99))
	row("server CPU per 1,000 attempts", cpu(k), cpu(bk), ratio(rt.CPUPerAttempt))
	row("server cores used", fmt.Sprintf("%.2f", k.ServerCores), fmt.Sprintf("%.2f", bk.ServerCores), "")
	row("load tool cores used", fmt.Sprintf("%.2f", k.DriverCores), fmt.Sprintf("%.2f", bk.DriverCores), "")
	if k.RedisCommandsTotal != nil {
		row("redis commands", count(*k.RedisCommandsTotal)+" "+commandList(k.RedisCommands), "", "")
	}
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

// commandList is "(evalsha 3, smembers 2)", by name.
func commandList(cmds map[string]int64) string {
	if len(cmds) == 0 {
		return ""
	}
	names := make([]string, 0, len(cmds))
	for c := range cmds {
		names = append(names, c)
	}
	slices.Sort(names)
	s := "("
	for i, c := range names {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %d", c, cmds[c])
	}
	return s + ")"
}
