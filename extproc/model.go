package extproc

import (
	"strings"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// ModelMetadataNamespace and ModelMetadataKey name the dynamic metadata through
// which Envoy hands the server a request's model: the generated Envoy configuration
// has envoy.filters.http.json_to_metadata write the JSON body's "model" there, and
// the ext_proc filter forward the namespace (metadata_options.forwarding_namespaces)
// with every headers message of every attempt (ext_proc.cc addDynamicMetadata).
// Unlike a header, metadata never goes upstream and is not lost by a retry: all
// attempts share one request-header map, so a header removed on attempt 1 would be
// missing on attempt 2.
const (
	ModelMetadataNamespace = "envoy-keypool"
	ModelMetadataKey       = "model"
)

// requestModel is the model a request names, for cooldowns per (key, model): the
// provider's path first (Gemini models/{model}:…, Azure deployments/{name}/…: the
// URL decides what the provider serves), then the pool's model header, then the
// model Envoy read from the JSON body. "" when none says.
func requestModel(t *target, path string, h *requestView, req *extprocv3.ProcessingRequest) string {
	if m := t.Provider.Model(path); m != "" {
		return m
	}
	if h.model != nil {
		if m := strings.TrimSpace(headerValue(h.model)); m != "" {
			return m
		}
	}
	if md := req.GetMetadataContext().GetFilterMetadata()[ModelMetadataNamespace]; md != nil {
		return strings.TrimSpace(md.GetFields()[ModelMetadataKey].GetStringValue())
	}
	return ""
}

// validPath reports whether p can be sent as an HTTP/1.1 or HTTP/2 :path: an
// origin-form path without control characters or spaces.
func validPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}
