// Command keypool-load measures what envoy-keypool costs per upstream attempt, by
// playing Envoy's side of the ext_proc protocol against a running server:
//
//	keypool-load --target 127.0.0.1:9001 --pool openai --concurrency 16 --duration 10s --baseline
//
// Each of --concurrency workers sends client requests back to back until --duration
// is over. A request is one or more attempts, and each attempt is what Envoy's
// upstream ext_proc filter does for one try: open a Process stream whose gRPC initial
// metadata names the pool (--metadata-key), send the request headers (a fresh
// x-request-id per request, x-envoy-attempt-count per attempt, about a dozen headers
// in all), read the answer, send the response headers with a status drawn from the
// mix (--fail-rate of --fail-status, else 200), read the answer, half-close and read
// the end of the stream. When the answer carries the retry marker the worker plays the
// next attempt with the same request id, as the route's retry policy would; an
// ImmediateResponse to the request headers is the pool's exhaustion answer and ends
// the request.
//
// With --baseline the same load then runs against a pass-through ext_proc server
// started inside the tool, which answers every message with an empty answer of its
// kind: the cost of the ext_proc hop itself. The ratio column divides envoy-keypool's
// figure by the baseline's. An in-process baseline shares the load generator's Go
// runtime and skips the switch between processes that the server under test pays; for
// a like-for-like hop, serve the baseline in its own process and point at it:
//
//	keypool-load passthrough --listen 127.0.0.1:9201 &
//	keypool-load --target 127.0.0.1:9001 --baseline-target 127.0.0.1:9201
//
// When the server answers a failure's response headers by asking for the body
// (mode_override with response_body_mode BUFFERED, as envoy-keypool does to classify
// error bodies), the worker sends the provider's error body in one message, as Envoy
// does, and reads the retry marker from that message's answer.
//
// Measurement: each run warms up for --warmup (counted nowhere), then measures for
// --duration. --rate paces attempts at a fixed rate across the workers (an open
// loop: a token no worker is free to take is counted as missed) instead of each
// worker sending back to back. --server-pid (and --baseline-pid) read the server
// process's CPU time (/proc/PID/stat, user + system) over the window; --redis reads
// the commands Redis ran over it (INFO commandstats).
//
// Reading the output (a table, or JSON with --json):
//
//	requests/s   client requests finished per second (each one or more attempts)
//	attempts/s   attempts that ran to the end of their stream without error
//	streams/s    Process streams opened, failed ones included (= attempts/s when no errors)
//	message p50/p99/max
//	             from sending a message to reading its answer: what Envoy holds the
//	             request (or the response) for
//	stream p50/p90/p99
//	             latency of one stream, from opening it to reading its end
//	server CPU per 1,000 attempts
//	             the server process's CPU time over the window, per 1,000 attempts
//	retries      answers that carried the retry marker (a key failed over)
//	exhausted    ImmediateResponses: the pool had no key left for the request
//	errors       streams that failed, by gRPC code (or "unexpected_answer")
//
// Two more commands build on it:
//
//	keypool-load bench --keypool-bin bin/envoy-keypool [--go-results bench-go.txt]
//
// starts the pass-through, envoy-keypool in memory and envoy-keypool on Redis (and a
// redis-server), each pinned to one CPU with taskset, and runs this tool as a child
// pinned to the other CPU for every case: 3,600 attempts/s over 32 streams, and
// closed loops of 32 and 256 streams, each healthy and with 10 % of attempts
// answered 429, in --rounds rounds. It prints issue 12's targets (ratios of
// envoy-keypool to the pass-through in the same round, medians over rounds, with how
// far each is), the Go benchmarks' medians and every case, as Markdown (`make bench`).
//
//	keypool-load soak --keypool-bin bin/envoy-keypool --duration 10m --plot soak.svg
//
// loads one envoy-keypool at a fixed rate for --duration and plots its RSS,
// goroutines (from its /metrics) and message p99 per --interval, as SVG or PNG
// (`make soak`).
//
// Throughput measured with the load generator on the same machine as the server is
// a lower bound: both compete for the same cores. Compare ratios, not absolutes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keypool-load:", err)
		os.Exit(1)
	}
}
