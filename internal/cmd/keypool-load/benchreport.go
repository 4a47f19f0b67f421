package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// spread is the median of a figure over rounds, with its smallest and largest.
type spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

func spreadOf(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	return spread{Median: median(xs), Min: slices.Min(xs), Max: slices.Max(xs), N: len(xs)}
}

// benchSummary is the batch's figures: the targets, and every case.
type benchSummary struct {
	Load1 spread `json:"load_average_1m"`
	// OtherCores is the CPU the rest of the machine used during the runs.
	OtherCores spread      `json:"other_cores"`
	Targets    []targetRow `json:"targets"`
	Cases      []caseRow   `json:"cases"`
}

// targetRow is one target of issue 12 and how far each state is from it.
type targetRow struct {
	Figure string   `json:"figure"`
	Memory *verdict `json:"memory,omitempty"`
	Redis  *verdict `json:"redis,omitempty"`
}

// verdict compares a figure with its limit: at most (atMost) or at least Limit.
type verdict struct {
	Value  spread  `json:"value"`
	Limit  float64 `json:"limit"`
	AtMost bool    `json:"at_most"`
	Met    bool    `json:"met"`
	// Off is how far the median is past the limit, relative to it (0.04: 4 % too
	// high for an at-most limit, 4 % too low for an at-least one); 0 when met.
	Off float64 `json:"off"`
	// Unit prints the figure: "×" for ratios, else the unit after the number.
	Unit string `json:"unit"`
}

func judge(v spread, limit float64, atMost bool, unit string) *verdict {
	if v.N == 0 {
		return nil
	}
	d := &verdict{Value: v, Limit: limit, AtMost: atMost, Unit: unit}
	if atMost {
		d.Met = v.Median <= limit
		if !d.Met && limit > 0 {
			d.Off = v.Median/limit - 1
		}
	} else {
		d.Met = v.Median >= limit
		if !d.Met && limit > 0 {
			d.Off = 1 - v.Median/limit
		}
	}
	return d
}

// caseRow is one (load, mix, server) over the rounds; the ratios divide each round's
// figure by the pass-through's in the same round.
type caseRow struct {
	Load        string      `json:"load"`
	Mix         string      `json:"mix"`
	Server      string      `json:"server"`
	Attempts    spread      `json:"attempts_per_second"`
	Missed      spread      `json:"missed"`
	MsgP50      spread      `json:"message_p50_us"`
	MsgP99      spread      `json:"message_p99_us"`
	MsgMax      spread      `json:"message_max_us"`
	StreamP99   spread      `json:"stream_p99_us"`
	CPU         spread      `json:"server_cpu_ms_per_1000_attempts"`
	ServerCores spread      `json:"server_cores"`
	DriverCores spread      `json:"driver_cores"`
	Errors      spread      `json:"errors"`
	Retries     spread      `json:"retries_per_1000_attempts"`
	Ratio       *caseRatios `json:"ratio,omitempty"` // nil for the pass-through
	// RedisPer1000 are the Redis commands per 1,000 attempts beyond what Redis ran
	// idle in as long a window.
	RedisPer1000 *spread `json:"redis_commands_per_1000_attempts_beyond_idle,omitempty"`
}

type caseRatios struct {
	Attempts  spread `json:"attempts_per_second"`
	MsgP50    spread `json:"message_p50"`
	MsgP99    spread `json:"message_p99"`
	MsgMax    spread `json:"message_max"`
	StreamP99 spread `json:"stream_p99"`
	CPU       spread `json:"cpu_per_attempt"`
}

// Figures read from a run.
var (
	figAttempts  = func(r result) float64 { return r.AttemptsPerSec }
	figMsgP50    = func(r result) float64 { return r.MsgP50us }
	figMsgP99    = func(r result) float64 { return r.MsgP99us }
	figMsgMax    = func(r result) float64 { return r.MsgMaxUs }
	figStreamP99 = func(r result) float64 { return r.P99us }
	figCPU       = func(r result) float64 { return r.ServerCPUPer1000Attempts }
)

type runKey struct {
	round             int
	load, mix, server string
}

func summarise(b *benchBatch) *benchSummary {
	runs := map[runKey]result{}
	var loads, others []float64
	for _, r := range b.Runs {
		runs[runKey{r.Round, r.Load, r.Mix, r.Server}] = r.Result
		loads = append(loads, r.Load1)
		if r.Result.OtherCores != nil {
			others = append(others, *r.Result.OtherCores)
		}
	}
	rounds := b.Options.Rounds
	// values is fig of every round's run of the case; ratios divide each by the
	// pass-through's of the same round.
	values := func(load, mix, server string, fig func(result) float64) []float64 {
		var xs []float64
		for round := 1; round <= rounds; round++ {
			if r, ok := runs[runKey{round, load, mix, server}]; ok {
				xs = append(xs, fig(r))
			}
		}
		return xs
	}
	ratios := func(load, mix, server string, fig func(result) float64) spread {
		var xs []float64
		for round := 1; round <= rounds; round++ {
			k, ok1 := runs[runKey{round, load, mix, server}]
			base, ok2 := runs[runKey{round, load, mix, serverPassThrough}]
			if ok1 && ok2 && fig(base) > 0 {
				xs = append(xs, fig(k)/fig(base))
			}
		}
		return spreadOf(xs)
	}
	idleTotal, hasIdle := int64(0), b.IdleWindow > 0
	for _, n := range b.IdleRedis {
		idleTotal += n
	}
	redisBeyondIdle := func(load, mix string) *spread {
		if !hasIdle {
			return nil
		}
		var xs []float64
		for round := 1; round <= rounds; round++ {
			r, ok := runs[runKey{round, load, mix, serverRedis}]
			if !ok || r.RedisCommandsTotal == nil || r.Attempts == 0 {
				continue
			}
			beyond := float64(*r.RedisCommandsTotal) - float64(idleTotal)*r.Elapsed/b.IdleWindow
			xs = append(xs, 1000*math.Max(0, beyond)/float64(r.Attempts))
		}
		if len(xs) == 0 {
			return nil
		}
		s := spreadOf(xs)
		return &s
	}

	s := &benchSummary{Load1: spreadOf(loads), OtherCores: spreadOf(others)}
	for _, load := range b.Options.Loads {
		for _, mix := range benchMixes {
			for _, server := range benchServers {
				if len(values(load.Name, mix, server, figAttempts)) == 0 {
					continue
				}
				c := caseRow{
					Load: load.Name, Mix: mix, Server: server,
					Attempts:    spreadOf(values(load.Name, mix, server, figAttempts)),
					Missed:      spreadOf(values(load.Name, mix, server, func(r result) float64 { return float64(r.Missed) })),
					MsgP50:      spreadOf(values(load.Name, mix, server, figMsgP50)),
					MsgP99:      spreadOf(values(load.Name, mix, server, figMsgP99)),
					MsgMax:      spreadOf(values(load.Name, mix, server, figMsgMax)),
					StreamP99:   spreadOf(values(load.Name, mix, server, figStreamP99)),
					CPU:         spreadOf(values(load.Name, mix, server, figCPU)),
					ServerCores: spreadOf(values(load.Name, mix, server, func(r result) float64 { return r.ServerCores })),
					DriverCores: spreadOf(values(load.Name, mix, server, func(r result) float64 { return r.DriverCores })),
					Errors:      spreadOf(values(load.Name, mix, server, func(r result) float64 { return float64(r.Errors) })),
					Retries: spreadOf(values(load.Name, mix, server, func(r result) float64 {
						return 1000 * div(float64(r.Retries), float64(r.Attempts))
					})),
				}
				if server != serverPassThrough {
					c.Ratio = &caseRatios{
						Attempts:  ratios(load.Name, mix, server, figAttempts),
						MsgP50:    ratios(load.Name, mix, server, figMsgP50),
						MsgP99:    ratios(load.Name, mix, server, figMsgP99),
						MsgMax:    ratios(load.Name, mix, server, figMsgMax),
						StreamP99: ratios(load.Name, mix, server, figStreamP99),
						CPU:       ratios(load.Name, mix, server, figCPU),
					}
				}
				if server == serverRedis {
					c.RedisPer1000 = redisBeyondIdle(load.Name, mix)
				}
				s.Cases = append(s.Cases, c)
			}
		}
	}

	// The targets of issue 12.
	row := func(figure, load, mix string, fig func(result) float64, memLimit, redisLimit float64, atMost bool) targetRow {
		return targetRow{Figure: figure,
			Memory: judge(ratios(load, mix, serverMemory, fig), memLimit, atMost, "×"),
			Redis:  judge(ratios(load, mix, serverRedis, fig), redisLimit, atMost, "×")}
	}
	rate := fmt.Sprintf("%s attempts/s", thousands(b.Options.Rate))
	s.Targets = []targetRow{
		row("CPU per attempt, healthy, at "+rate, "rate", mixHealthy, figCPU, 1.02, 1.02, true),
		row(fmt.Sprintf("CPU per attempt, %g %% failing over, at %s", 100*b.Options.FailRate, rate), "rate", mixFailover, figCPU, 1.15, 1.25, true),
		row("max throughput, 32 streams, closed loop", "closed-32", mixHealthy, figAttempts, 0.97, 0.97, false),
		row("p99 per attempt (stream), 256 streams, closed loop", "closed-256", mixHealthy, figStreamP99, 1.05, 1.05, true),
	}
	if r := redisBeyondIdle("rate", mixHealthy); r != nil {
		// A command on every healthy first attempt would be 1,000 per 1,000; what
		// is left below 1 is the replica's upkeep drifting between windows.
		s.Targets = append(s.Targets, targetRow{Figure: "Redis commands per 1,000 healthy attempts, beyond idle",
			Redis: judge(*r, 1, true, " per 1,000")})
	}
	return s
}

// thousands prints 3600 as "3,600".
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// busyOtherCores is how much CPU other work may take during the runs before
// their figures count as noise: a tenth of a core.
const busyOtherCores = 0.1

// machineWasBusy tells whether other work competed with the runs: by what the
// rest of the machine used during them, or, for a batch that did not measure
// it, by a load average above the CPU count. The load average alone cannot
// tell: the bench's own processes keep it near 2.
func machineWasBusy(s *benchSummary, cpus int) bool {
	if s.OtherCores.N > 0 {
		return s.OtherCores.Median > busyOtherCores
	}
	return s.Load1.Median > float64(cpus)
}

func writeBenchReport(w io.Writer, b *benchBatch) error {
	m, o, s := b.Machine, b.Options, b.Summary
	fmt.Fprintf(w, "# keypool-load bench\n\n")
	fmt.Fprintf(w, "- machine: %s, %d CPUs, %s, kernel %s, %s\n", m.CPU, m.CPUs, m.OS, m.Kernel, m.Go)
	fmt.Fprintf(w, "- %s\n", o.Pinning)
	fmt.Fprintf(w, "- %d rounds; each runs every case for %s after a %s warm-up; a pool of %d keys; the load tool on %d gRPC connections\n",
		o.Rounds, o.Duration, o.Warmup, o.Keys, o.Conns)
	fmt.Fprintf(w, "- load average (1 min) when the runs started: median %.1f (%.1f–%.1f) on %d CPUs\n", s.Load1.Median, s.Load1.Min, s.Load1.Max, m.CPUs)
	if s.OtherCores.N > 0 {
		fmt.Fprintf(w, "- other work on the machine (all but the servers, the load tool and Redis) during the runs: median %.2f cores (%.2f–%.2f)\n",
			s.OtherCores.Median, s.OtherCores.Min, s.OtherCores.Max)
	}
	if machineWasBusy(s, m.CPUs) {
		fmt.Fprintf(w, "- **the machine was busy with other work: figures measured at this load are noise; repeat when it is quiet**\n")
	}
	for _, n := range b.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	fmt.Fprintf(w, "\nRatios are envoy-keypool ÷ the pass-through ext_proc server (its own process, pinned alike) in the same round; medians over rounds (smallest–largest).\n")

	fmt.Fprintf(w, "\n## Targets (issue 12)\n\n| figure | in-memory | Redis | target |\n|---|---|---|---|\n")
	for _, t := range s.Targets {
		var limit string
		for _, v := range []*verdict{t.Memory, t.Redis} {
			if v != nil {
				limit = limitText(v)
			}
		}
		if t.Memory != nil && t.Redis != nil && t.Memory.Limit != t.Redis.Limit {
			limit = limitText(t.Memory) + " / " + limitText(t.Redis)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", t.Figure, verdictText(t.Memory), verdictText(t.Redis), limit)
	}

	if len(b.GoBench) > 0 {
		fmt.Fprintf(w, "\n## Go benchmarks (medians of each benchmark's runs)\n")
		writeGoBenchTable(w, b.GoBench)
	}

	fmt.Fprintf(w, "\n## Every case (medians over rounds)\n\n")
	fmt.Fprintf(w, "Loads: `rate` = %s attempts/s paced over 32 streams (an open loop); `closed-N` = N streams each sending back to back. "+
		"`failover` = %g %% of attempts answered 429. Message latency is from sending a message to reading its answer (what Envoy waits for); "+
		"CPU is the server process's user + system time (/proc/PID/stat) per 1,000 attempts.\n\n", thousands(o.Rate), 100*o.FailRate)
	fmt.Fprintf(w, "| load | mix | server | attempts/s | message p50 / p99 / max (µs) | stream p99 (µs) | CPU per 1,000 attempts | server / load-tool cores | retries per 1,000 | errors | vs pass-through: attempts/s, message p50 / p99 / max, stream p99, CPU |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range s.Cases {
		vs := "—"
		if c.Ratio != nil {
			r := c.Ratio
			vs = fmt.Sprintf("%s, %s / %s / %s, %s, %s", ratioText(r.Attempts), ratioText(r.MsgP50), ratioText(r.MsgP99),
				ratioText(r.MsgMax), ratioText(r.StreamP99), ratioText(r.CPU))
		}
		attempts := fmt.Sprintf("%.0f", c.Attempts.Median)
		if c.Missed.Median > 0 {
			attempts += fmt.Sprintf(" (%.0f missed)", c.Missed.Median)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.0f / %.0f / %.0f | %.0f | %.1f ms | %.2f / %.2f | %.0f | %.0f | %s |\n",
			c.Load, c.Mix, c.Server, attempts, c.MsgP50.Median, c.MsgP99.Median, c.MsgMax.Median, c.StreamP99.Median,
			c.CPU.Median, c.ServerCores.Median, c.DriverCores.Median, c.Retries.Median, c.Errors.Median, vs)
	}
	var redisNotes []string
	for _, c := range s.Cases {
		if c.RedisPer1000 != nil {
			redisNotes = append(redisNotes, fmt.Sprintf("%s %s: %.1f", c.Load, c.Mix, c.RedisPer1000.Median))
		}
	}
	if len(redisNotes) > 0 {
		fmt.Fprintf(w, "\nRedis commands per 1,000 attempts beyond idle (idle: %s in %.1fs): %s.\n",
			commandList(b.IdleRedis), b.IdleWindow, strings.Join(redisNotes, "; "))
	}
	return nil
}

func limitText(v *verdict) string {
	op := "≥"
	if v.AtMost {
		op = "≤"
	}
	if v.Unit == "×" {
		return fmt.Sprintf("%s %.2f×", op, v.Limit)
	}
	return fmt.Sprintf("%s %g%s", op, v.Limit, v.Unit)
}

func verdictText(v *verdict) string {
	if v == nil {
		return "—"
	}
	var val string
	if v.Unit == "×" {
		val = fmt.Sprintf("%s", ratioText(v.Value))
	} else {
		val = fmt.Sprintf("%.1f (%.1f–%.1f)", v.Value.Median, v.Value.Min, v.Value.Max)
	}
	if v.Met {
		return "**" + val + "** met"
	}
	return fmt.Sprintf("**%s** %.0f %% off", val, 100*v.Off)
}

func ratioText(s spread) string {
	if s.N == 0 {
		return "—"
	}
	if s.N == 1 {
		return fmt.Sprintf("%.2f×", s.Median)
	}
	return fmt.Sprintf("%.2f× (%.2f–%.2f)", s.Median, s.Min, s.Max)
}
