package providers

import (
	"net/url"
	"strings"
)

// stripKeyParam removes every key= parameter from a request path's query string, the
// other parameters kept as they were written. It is Gemini's credential, and every
// provider strips it, as every provider strips all CredentialHeaders: a client
// credential never goes upstream on a pooled route, whichever API the client thought
// it was calling. No LLM API of this package reads a parameter called key otherwise.
func stripKeyParam(path string) (string, bool) { return removeQueryParam(path, "key") }

// queryKey returns the first non-empty value of the key= parameter of a request
// path's query string, decoded; "" when there is none.
func queryKey(path string) string {
	_, query, ok := strings.Cut(path, "?")
	if !ok {
		return ""
	}
	for query != "" {
		var param string
		param, query, _ = strings.Cut(query, "&")
		name, value, _ := strings.Cut(param, "=")
		if paramName(name) != "key" {
			continue
		}
		if v, err := url.QueryUnescape(value); err == nil && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// removeQueryParam returns path without any name= parameter in its query string, the
// others kept byte for byte and in order, and whether it removed one. The result is
// never empty: a path that was only a query becomes "/".
func removeQueryParam(path, name string) (string, bool) {
	base, query, ok := strings.Cut(path, "?")
	if !ok || !hasParam(query, name) {
		return path, false
	}
	var kept strings.Builder
	for query != "" {
		var param string
		param, query, _ = strings.Cut(query, "&")
		n, _, _ := strings.Cut(param, "=")
		if param == "" || paramName(n) == name {
			continue
		}
		if kept.Len() > 0 {
			kept.WriteByte('&')
		}
		kept.WriteString(param)
	}
	if base == "" {
		base = "/"
	}
	if kept.Len() == 0 {
		return base, true
	}
	return base + "?" + kept.String(), true
}

// hasParam reports whether query has a parameter called name, without allocating.
func hasParam(query, name string) bool {
	for query != "" {
		var param string
		param, query, _ = strings.Cut(query, "&")
		n, _, _ := strings.Cut(param, "=")
		if paramName(n) == name {
			return true
		}
	}
	return false
}

// paramName decodes a query parameter's name as servers do ("%6Bey" is "key").
func paramName(raw string) string {
	if !strings.ContainsAny(raw, "%+") {
		return raw
	}
	n, err := url.QueryUnescape(raw)
	if err != nil {
		return raw
	}
	return n
}
