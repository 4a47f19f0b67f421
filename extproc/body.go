package extproc

import (
	"strconv"
	"strings"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/envoy-keypool/envoy-keypool/providers"
)

// Body classification: when a failure answer's class depends on its error body
// (OpenAI's 429 is a rate limit, a quota or a request too large; Gemini's bad key is
// a 400), the server answers the response headers with a mode_override that makes
// Envoy buffer this one response's body and send it in a response_body message. The
// decision, and the retry marker, go on the answer to that message. What Envoy
// 1.37.0 does, read in its source (source/extensions/filters/http/ext_proc/):
//
//   - ext_proc.cc Filter::onReceiveMessage applies a mode_override only with
//     allow_mode_override, without send_body_without_waiting_for_header_response and
//     FULL_DUPLEX_STREAMED, and while a headers message is being answered. The
//     effective mode (effectiveModeOverride) takes both body modes from the override
//     and the header and trailer modes from it unless DEFAULT, and must be one of
//     allowed_override_modes when that list is set.
//   - processor_state.cc handleHeadersResponse applies a header mutation of the
//     headers answer at once, then handleHeaderContinue holds the headers in BUFFERED
//     mode, or continues at once when the response has no body (no_body_): a response
//     whose headers end the stream never produces a body message.
//   - ext_proc.cc onData / handleDataBufferedMode buffer the body up to the end of
//     the stream (StopIterationAndBuffer) and send it in one message; past the buffer
//     limit Envoy answers a local 500 instead, which the router does not retry.
//   - processor_state.cc handleBufferedBodyCallback applies the BodyResponse's
//     header mutation to the held headers (processHeaderMutationIfAvailable) before
//     they continue, so the router's retry decision (router.cc onUpstreamHeaders,
//     retriable-headers) sees the marker; when it retries, router.cc onUpstreamData
//     returns early for the response it abandoned and its body is dropped.
//
// So the server asks for a body only for a failure status the provider can refine,
// when the headers announce a body whose content-length is known and at most
// providers.MaxErrorBody; every other answer is decided from the headers alone.

// bodyDecision says whether a response body can be asked for, and if not why.
type bodyDecision string

const (
	bodyRequested   bodyDecision = "requested"
	bodyNone        bodyDecision = "no_body"
	bodyUnknownSize bodyDecision = "unknown_size"
	bodyTooLarge    bodyDecision = "too_large"
)

// bodyAvailability decides whether Envoy can buffer the body of a response whose
// headers message is msg, without risking its buffer limit.
func bodyAvailability(msg *extprocv3.HttpHeaders, h *headerView) bodyDecision {
	if msg.GetEndOfStream() {
		return bodyNone
	}
	v := strings.TrimSpace(h.Get("content-length"))
	if v == "" {
		return bodyUnknownSize
	}
	n, err := strconv.ParseUint(v, 10, 63)
	switch {
	case err != nil:
		return bodyUnknownSize
	case n == 0:
		return bodyNone
	case n > providers.MaxErrorBody:
		return bodyTooLarge
	}
	return bodyRequested
}

// bufferResponseBody answers response headers with the mode_override that asks
// Envoy for the body of this response only. The request body mode must stay the
// configured NONE: the override's body modes replace the configured ones whole.
func bufferResponseBody() *extprocv3.ProcessingResponse {
	r := continueResponseHeaders(nil)
	r.ModeOverride = &extprocfilterv3.ProcessingMode{
		RequestBodyMode:  extprocfilterv3.ProcessingMode_NONE,
		ResponseBodyMode: extprocfilterv3.ProcessingMode_BUFFERED,
	}
	return r
}
