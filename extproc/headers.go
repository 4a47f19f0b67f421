package extproc

import (
	"strconv"
	"strings"
	"unsafe"

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

// headerValue is hv's value, raw_value first. A raw value is read in place, without
// a copy: the string shares the message's bytes, which nothing writes after gRPC
// decoded the message (protobuf-go copies bytes fields out of the wire buffer when
// it unmarshals, and this server never modifies a request), and it keeps them alive
// as long as it lives. Every provider reads several headers of every answer, so a
// copy per read would be most of the hot path's allocations.
func headerValue(hv *corev3.HeaderValue) string {
	if hv == nil {
		return ""
	}
	if raw := hv.GetRawValue(); len(raw) > 0 {
		return unsafe.String(&raw[0], len(raw))
	}
	return hv.GetValue()
}

// status reads the response's :status; ok is false when it is absent or not a
// three-digit number.
func (h headerView) status() (int, bool) {
	return parseStatus(h.Get(":status"))
}

func parseStatus(v string) (int, bool) {
	s := strings.TrimSpace(v)
	if len(s) != 3 {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 100 {
		return 0, false
	}
	return n, true
}

// parseAttemptNumber reads the attempt count header; 0 when absent or malformed,
// which the pool treats as a possible retry.
func parseAttemptNumber(v string) int {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 {
		return 0
	}
	return n
}

// credentialSlots is how many credential headers requestView indexes: the length of
// providers.CredentialHeaders().
const credentialSlots = 4

// requestView is the request headers of one attempt, read in one pass: the headers
// the server decides on are found while walking the map once, the others are looked
// up on demand (a provider may read one more when it looks for a credential).
type requestView struct {
	all   []*corev3.HeaderValue
	names *requestNames

	requestID, attempt, path, model *corev3.HeaderValue
	// credentials holds the credential headers present, in the order of
	// providers.CredentialHeaders(); nil where absent.
	credentials [credentialSlots]*corev3.HeaderValue
}

// requestNames are the header names a requestView indexes.
type requestNames struct {
	requestID, attempt, model string
	credentials               [credentialSlots]string
}

func readRequest(headers []*corev3.HeaderValue, n *requestNames) requestView {
	v := requestView{all: headers, names: n}
	for _, hv := range headers {
		k := hv.GetKey()
		switch {
		case k == ":path":
			v.path = firstOf(v.path, hv)
		case k == n.requestID:
			v.requestID = firstOf(v.requestID, hv)
		case k == n.attempt:
			v.attempt = firstOf(v.attempt, hv)
		case k == n.model && k != "":
			v.model = firstOf(v.model, hv)
		default:
			for i, name := range n.credentials {
				if k == name {
					v.credentials[i] = firstOf(v.credentials[i], hv)
					break
				}
			}
		}
	}
	return v
}

// firstOf keeps the first of several headers of one name, as Get does.
func firstOf(have, hv *corev3.HeaderValue) *corev3.HeaderValue {
	if have != nil {
		return have
	}
	return hv
}

// Get implements providers.Headers: indexed headers without a second walk.
func (v *requestView) Get(name string) string {
	for i, n := range v.names.credentials {
		if n == name {
			return headerValue(v.credentials[i])
		}
	}
	switch name {
	case ":path":
		return headerValue(v.path)
	case v.names.requestID:
		return headerValue(v.requestID)
	case v.names.attempt:
		return headerValue(v.attempt)
	}
	return headerView{v.all}.Get(name)
}
