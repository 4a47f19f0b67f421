package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"

	"golang.org/x/perf/benchfmt"
)

// goBench is one Go benchmark's results over its runs (go test -count), medians per
// unit in the units go test printed (ns/op, B/op, allocs/op, and what a benchmark
// reports itself: cpu-ns/op, ratio, …).
type goBench struct {
	Pkg     string             `json:"pkg"`
	Name    string             `json:"name"`
	Runs    int                `json:"runs"`
	Units   []string           `json:"units"` // in the order go test printed them
	Medians map[string]float64 `json:"medians"`
}

// readGoBench summarises `go test -bench` output. Lines that are no benchmark
// result are skipped, except a FAIL or a panic, which is an error: a benchmark that
// failed measured nothing.
func readGoBench(r io.Reader, fileName string) ([]goBench, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fileName, err)
	}
	var failed []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "--- FAIL") {
			failed = append(failed, line)
		}
	}
	if len(failed) > 0 {
		return nil, fmt.Errorf("%s: the Go benchmarks failed:\n%s", fileName, strings.Join(failed, "\n"))
	}

	type key struct{ pkg, name string }
	var order []key
	values := map[key]map[string][]float64{}
	units := map[key][]string{}
	runs := map[key]int{}
	rd := benchfmt.NewReader(bytes.NewReader(data), fileName)
	for rd.Scan() {
		res, ok := rd.Result().(*benchfmt.Result)
		if !ok {
			continue // unit metadata, or a line benchfmt could not read
		}
		k := key{res.GetConfig("pkg"), res.Name.String()}
		if values[k] == nil {
			values[k] = map[string][]float64{}
			order = append(order, k)
		}
		runs[k]++
		for _, v := range res.Values {
			unit, val := v.Unit, v.Value
			if v.OrigUnit != "" {
				unit, val = v.OrigUnit, v.OrigValue
			}
			if !slices.Contains(units[k], unit) {
				units[k] = append(units[k], unit)
			}
			values[k][unit] = append(values[k][unit], val)
		}
	}
	if err := rd.Err(); err != nil {
		return nil, err
	}
	out := make([]goBench, 0, len(order))
	for _, k := range order {
		b := goBench{Pkg: k.pkg, Name: k.name, Runs: runs[k], Units: units[k], Medians: map[string]float64{}}
		for u, vs := range values[k] {
			b.Medians[u] = median(vs)
		}
		out = append(out, b)
	}
	return out, nil
}

// median of xs (the mean of the middle two for an even count); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// writeGoBenchTable prints the medians as one Markdown table per package.
func writeGoBenchTable(w io.Writer, benches []goBench) {
	var pkg string
	for _, b := range benches {
		if b.Pkg != pkg {
			pkg = b.Pkg
			fmt.Fprintf(w, "\n`%s`\n\n| benchmark | runs | medians |\n|---|---|---|\n", pkg)
		}
		parts := make([]string, 0, len(b.Units))
		for _, u := range b.Units {
			parts = append(parts, formatValue(b.Medians[u], u))
		}
		fmt.Fprintf(w, "| %s | %d | %s |\n", b.Name, b.Runs, strings.Join(parts, ", "))
	}
}

// formatValue prints a median in its unit; times per op in the unit that reads
// best ("3.55 µs/op", "0.36 ms cpu/op").
func formatValue(v float64, unit string) string {
	if base, ok := strings.CutSuffix(unit, "ns/op"); ok { // ns/op, cpu-ns/op
		per := "/op"
		if base != "" {
			per = " " + strings.TrimSuffix(base, "-") + "/op"
		}
		switch {
		case v >= 1e6:
			return fmt.Sprintf("%.2f ms%s", v/1e6, per)
		case v >= 1e3:
			return fmt.Sprintf("%.2f µs%s", v/1e3, per)
		}
		return fmt.Sprintf("%.0f ns%s", v, per)
	}
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d %s", int64(v), unit)
	}
	return fmt.Sprintf("%.3g %s", v, unit)
}
