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
// Reading the output (a table, or JSON with --json):
//
//	requests/s   client requests finished per second (each one or more attempts)
//	attempts/s   attempts that ran to the end of their stream without error
//	streams/s    Process streams opened, failed ones included (= attempts/s when no errors)
//	p50/p90/p99  latency of one stream, from opening it to reading its end: what a
//	             request waits for ext_proc on each attempt, twice the message round trip
//	retries      answers that carried the retry marker (a key failed over)
//	exhausted    ImmediateResponses: the pool had no key left for the request
//	errors       streams that failed, by gRPC code (or "unexpected_answer")
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
