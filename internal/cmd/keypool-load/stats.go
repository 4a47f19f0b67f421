package main

import (
	"errors"
	"math"
	"slices"
	"time"

	"google.golang.org/grpc/status"
)

// stats is what one worker counted; loadTarget adds them up.
type stats struct {
	requests, streams, attempts int64
	retries, retriesUsedUp      int64
	exhausted                   int64
	errors                      map[string]int64
	latencies                   []time.Duration // per stream, opening to end
	messages                    []time.Duration // per message, sent to answered
}

func newStats() *stats { return &stats{errors: map[string]int64{}} }

func (s *stats) fail(err error) {
	code := status.Code(err).String()
	if errors.Is(err, errUnexpectedAnswer) {
		code = "unexpected_answer"
	}
	s.errors[code]++
}

func (s *stats) merge(o *stats) {
	s.requests += o.requests
	s.streams += o.streams
	s.attempts += o.attempts
	s.retries += o.retries
	s.retriesUsedUp += o.retriesUsedUp
	s.exhausted += o.exhausted
	for k, v := range o.errors {
		s.errors[k] += v
	}
	s.latencies = append(s.latencies, o.latencies...)
	s.messages = append(s.messages, o.messages...)
}

func (s *stats) result(elapsed time.Duration) result {
	slices.Sort(s.latencies)
	slices.Sort(s.messages)
	var errs int64
	for _, v := range s.errors {
		errs += v
	}
	sec := elapsed.Seconds()
	return result{
		Elapsed:        sec,
		Requests:       s.requests,
		Streams:        s.streams,
		Attempts:       s.attempts,
		Retries:        s.retries,
		RetriesUsedUp:  s.retriesUsedUp,
		Exhausted:      s.exhausted,
		Errors:         errs,
		ErrorsByCode:   s.errors,
		RequestsPerSec: float64(s.requests) / sec,
		AttemptsPerSec: float64(s.attempts) / sec,
		StreamsPerSec:  float64(s.streams) / sec,
		P50us:          micros(percentile(s.latencies, 0.50)),
		P90us:          micros(percentile(s.latencies, 0.90)),
		P99us:          micros(percentile(s.latencies, 0.99)),
		MaxUs:          micros(percentile(s.latencies, 1)),
		Messages:       int64(len(s.messages)),
		MsgP50us:       micros(percentile(s.messages, 0.50)),
		MsgP99us:       micros(percentile(s.messages, 0.99)),
		MsgMaxUs:       micros(percentile(s.messages, 1)),
	}
}

// percentile is the nearest-rank percentile of sorted samples; 0 without samples.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
