package extproc

import (
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// requestTimeAttribute is where Envoy puts the request's start when the ext_proc
// filter lists `request.time` in request_attributes: attributes are evaluated on the
// first request message of each filter instance (ext_proc.cc addAttributes) with the
// upstream filter's stream info, which is the downstream request's
// (router/upstream_request.cc), keyed by the filter's name; a timestamp is printed
// with absl::FormatTime in UTC (ext_proc/matching_utils.cc evaluateAttributes).
const (
	extProcFilterName    = "envoy.filters.http.ext_proc"
	requestTimeAttribute = "request.time"
)

// requestStart is when the request began: Envoy's request.time when it sends it (the
// same on every attempt), else fallback (the attempt's own start, exact for a request
// that does not fail over).
func requestStart(req *extprocv3.ProcessingRequest, fallback time.Time) time.Time {
	v := req.GetAttributes()[extProcFilterName].GetFields()[requestTimeAttribute].GetStringValue()
	if v == "" {
		return fallback
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil || t.After(fallback) {
		// Unreadable, or ahead of this clock (skew between Envoy's host and ours).
		return fallback
	}
	return t
}
