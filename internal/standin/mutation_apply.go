package standin

import (
	"errors"
	"fmt"
	"strings"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// Envoy's default header limits (HttpProtocolOptions.max_headers_count and
// HttpConnectionManager.max_request_headers_kb); ext_proc mutations are checked
// against them before and after they apply.
const (
	maxHeadersCount = 100
	maxHeadersBytes = 60 * 1024
)

// errMutation is the error class of a HeaderMutation that ext_proc refuses as a whole;
// the filter then answers with status_on_error (Filter::handleErrorResponse in ext_proc.cc).
var errMutation = errors.New("invalid header mutation")

// mutationResult counts what applyHeaderMutation did; rejected is Envoy's
// rejected_header_mutations counter.
type mutationResult struct {
	applied  int
	rejected int
}

// applyHeaderMutation applies an ext_proc HeaderMutation to h the way
// MutationUtils::applyHeaderMutations does in
// source/extensions/filters/http/ext_proc/mutation_utils.cc:
//   - removals first, then set_headers in order;
//   - a header value is read from raw_value only (current Envoy sends and reads
//     raw_value; with both set raw_value wins, with only value the header is set
//     empty);
//   - only the deprecated `append` BoolValue is honoured, default false (overwrite):
//     Envoy's ext_proc ignores HeaderValueOption.append_action (envoy issue #36982;
//     PRs #29862 and #37139 were closed unmerged) unless appendActions is true, which
//     the stand-in offers for a future Envoy that honours it;
//   - every change is checked with the mutation rules: disallowed changes are ignored
//     and counted, or fail the message with disallow_is_error;
//   - replacing allows :method (CONTINUE_AND_REPLACE compatibility).
//
// On error h may be partly mutated, as in Envoy; the caller replaces the response with
// a local reply anyway.
func applyHeaderMutation(m *extprocv3.HeaderMutation, h *headerMap, replacing bool, c *mutationChecker, appendActions bool) (mutationResult, error) {
	var res mutationResult
	if m == nil {
		return res, nil
	}
	if len(m.GetRemoveHeaders()) > maxHeadersCount || len(m.GetSetHeaders()) > maxHeadersCount {
		res.rejected++
		return res, fmt.Errorf("%w: more than %d headers to remove or set", errMutation, maxHeadersCount)
	}
	for _, name := range m.GetRemoveHeaders() {
		if !headerNameIsValid(name) {
			res.rejected++
			return res, fmt.Errorf("%w: invalid character in remove_headers", errMutation)
		}
		lower := strings.ToLower(name)
		switch c.check(opRemove, lower, "") {
		case checkOK:
			h.remove(lower)
			res.applied++
		case checkIgnore:
			res.rejected++
		case checkFail:
			res.rejected++
			return res, fmt.Errorf("%w: invalid attempt to remove %s", errMutation, lower)
		}
	}
	for _, sh := range m.GetSetHeaders() {
		hdr := sh.GetHeader()
		if hdr == nil {
			continue
		}
		// Only raw_value is read: with both set, raw_value wins; with only value, the
		// header is set empty (MutationUtils::applyHeaderMutations reads
		// sh.header().raw_value()).
		value := string(hdr.GetRawValue())
		if !headerNameIsValid(hdr.GetKey()) || !headerValueIsValid(value) {
			res.rejected++
			return res, fmt.Errorf("%w: invalid character in set_headers", errMutation)
		}
		name := strings.ToLower(hdr.GetKey())

		var appendValue bool
		if appendActions && sh.GetAppend() == nil {
			act, skip := appendActionOf(sh.GetAppendAction().String(), h.has(name))
			if skip {
				continue
			}
			appendValue = act
		} else {
			appendValue = sh.GetAppend().GetValue()
		}
		op := opSet
		if appendValue && h.has(name) {
			op = opAppend
		}
		result := c.check(op, name, value)
		if replacing && name == ":method" {
			result = checkOK
		}
		switch result {
		case checkOK:
			if appendValue {
				h.add(name, value)
			} else {
				h.set(name, value)
			}
			res.applied++
		case checkIgnore:
			res.rejected++
		case checkFail:
			res.rejected++
			return res, fmt.Errorf("%w: invalid attempt to modify %s", errMutation, name)
		}
	}
	if h.len() > maxHeadersCount || h.byteSize() > maxHeadersBytes {
		res.rejected++
		return res, fmt.Errorf("%w: headers exceed %d entries or %d bytes after mutation", errMutation, maxHeadersCount, maxHeadersBytes)
	}
	return res, nil
}

// appendActionOf maps a HeaderAppendAction to (append, skip) given whether the header
// exists, as HeaderParser does for route-level headers_to_add.
func appendActionOf(action string, exists bool) (appendValue, skip bool) {
	switch action {
	case "ADD_IF_ABSENT":
		return true, exists
	case "OVERWRITE_IF_EXISTS_OR_ADD":
		return false, false
	case "OVERWRITE_IF_EXISTS":
		return false, !exists
	default: // APPEND_IF_EXISTS_OR_ADD, the enum's zero value.
		return true, false
	}
}
