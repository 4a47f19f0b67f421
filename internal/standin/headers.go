package standin

import (
	"net/http"
	"sort"
	"strings"
)

// headerEntry is one header line. Keys are kept lower-case, as in Envoy's header maps.
type headerEntry struct {
	key   string
	value string
}

// headerMap is an ordered multi-map of headers including pseudo-headers (":method",
// ":path", ":authority", ":scheme", ":status"), the shape of Envoy's
// Http::HeaderMap that ext_proc serialises and mutates. The zero value is empty and
// ready to use.
type headerMap struct {
	entries []headerEntry
}

func (h *headerMap) get(key string) (string, bool) {
	key = strings.ToLower(key)
	for _, e := range h.entries {
		if e.key == key {
			return e.value, true
		}
	}
	return "", false
}

func (h *headerMap) values(key string) []string {
	key = strings.ToLower(key)
	var out []string
	for _, e := range h.entries {
		if e.key == key {
			out = append(out, e.value)
		}
	}
	return out
}

func (h *headerMap) has(key string) bool {
	_, ok := h.get(key)
	return ok
}

// set replaces every value of key with value (Envoy's setCopy): the first entry keeps
// its position, the others are dropped; an absent key is appended.
func (h *headerMap) set(key, value string) {
	key = strings.ToLower(key)
	found := false
	out := h.entries[:0]
	for _, e := range h.entries {
		if e.key != key {
			out = append(out, e)
			continue
		}
		if !found {
			found = true
			out = append(out, headerEntry{key: key, value: value})
		}
	}
	h.entries = out
	if !found {
		h.add(key, value)
	}
}

// add appends one more value for key (Envoy's addCopy).
func (h *headerMap) add(key, value string) {
	key = strings.ToLower(key)
	// Pseudo-headers come first in HTTP/2 and in Envoy's maps.
	if strings.HasPrefix(key, ":") {
		i := 0
		for i < len(h.entries) && strings.HasPrefix(h.entries[i].key, ":") {
			i++
		}
		h.entries = append(h.entries, headerEntry{})
		copy(h.entries[i+1:], h.entries[i:])
		h.entries[i] = headerEntry{key: key, value: value}
		return
	}
	h.entries = append(h.entries, headerEntry{key: key, value: value})
}

func (h *headerMap) remove(key string) {
	key = strings.ToLower(key)
	out := h.entries[:0]
	for _, e := range h.entries {
		if e.key != key {
			out = append(out, e)
		}
	}
	h.entries = out
}

func (h *headerMap) len() int { return len(h.entries) }

// byteSize is the sum of key and value lengths, as Envoy's HeaderMap::byteSize.
func (h *headerMap) byteSize() int {
	n := 0
	for _, e := range h.entries {
		n += len(e.key) + len(e.value)
	}
	return n
}

func (h *headerMap) clone() *headerMap {
	return &headerMap{entries: append([]headerEntry(nil), h.entries...)}
}

// toHTTP copies the regular (non-pseudo) headers into an http.Header.
func (h *headerMap) toHTTP(dst http.Header) {
	for _, e := range h.entries {
		if strings.HasPrefix(e.key, ":") {
			continue
		}
		dst[http.CanonicalHeaderKey(e.key)] = append(dst[http.CanonicalHeaderKey(e.key)], e.value)
	}
}

// hopByHop are the connection-specific headers a proxy never forwards (RFC 9110 7.6.1);
// Envoy's codecs drop them too.
var hopByHop = []string{
	"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
}

func (h *headerMap) removeHopByHop() {
	for _, k := range hopByHop {
		h.remove(k)
	}
}

// fromHTTP appends the headers of an http.Header, lower-casing keys.
func (h *headerMap) fromHTTP(src http.Header) {
	keys := make([]string, 0, len(src))
	for k := range src {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range src[k] {
			h.add(k, v)
		}
	}
}
