// Package extproc is envoy-keypool's Envoy external-processing (ext_proc) gRPC
// service. Envoy runs it as an upstream filter of a provider's cluster, so every
// attempt of a request (the first try and each retry) opens its own Process stream
// and sends its request headers, then its response headers.
//
// On request headers the server names the pool from the stream's gRPC initial
// metadata (set in Envoy's filter configuration, never by the client), applies the
// pool's BYOK policy, strips client credentials, and injects the key the pool picks
// for this attempt; when no key is left it answers with an ImmediateResponse in the
// provider's error format. On response headers a key failure (401/403/429 by
// default) marks the key and adds the retry marker header that the route's
// `retry_on: retriable-headers` policy retries on.
//
// Every message gets a well-formed answer: headers the server cannot use pass
// unchanged, phases it never asked for (bodies, trailers) get an empty answer of
// their kind, and a request that cannot be matched to a pool fails closed with an
// error body. Key values never appear in logs, metrics or answers other than the
// one header that carries the key upstream.
//
// The package turns protocol messages into calls on keypool and providers; it
// knows nothing of Redis or of the providers' formats.
package extproc
