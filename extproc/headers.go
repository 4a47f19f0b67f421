package extproc

import (
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// headerView reads an ext_proc HeaderMap. Envoy sends names in lower case and
// values in raw_value (current versions) or value (older ones, and some test
// clients); both are read.
type headerView struct {
	headers []*corev3.HeaderValue
}

// Get returns the first value of name (lower case), "" when absent.
func (h headerView) Get(name string) string {
	for _, hv := range h.headers {
		if hv.GetKey() == name {
			return headerValue(hv)
		}
	}
	return ""
}

// Has reports whether name (lower case) is present.
func (h headerView) Has(name string) bool {
	for _, hv := range h.headers {
		if hv.GetKey() == name {
			return true
		}
	}
	return false
}

func headerValue(hv *corev3.HeaderValue) string {
	if raw := hv.GetRawValue(); len(raw) > 0 {
		return string(raw)
	}
	return hv.GetValue()
}

// status reads the response's :status; ok is false when it is absent or not a
// three-digit number.
func (h headerView) status() (int, bool) {
	s := strings.TrimSpace(h.Get(":status"))
	if len(s) != 3 {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 100 {
		return 0, false
	}
	return n, true
}

// attemptNumber reads the attempt count header; 0 when absent or malformed, which
// the pool treats as a possible retry.
func (h headerView) attemptNumber(name string) int {
	n, err := strconv.Atoi(strings.TrimSpace(h.Get(name)))
	if err != nil || n < 1 {
		return 0
	}
	return n
}
