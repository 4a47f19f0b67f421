// Package providers holds what differs between LLM providers: how a key is sent,
// which client headers carry credentials, which answers are key failures, how long
// the provider asks a key to wait, and the error body a client of that provider's
// SDK understands.
//
// One file per provider. The package knows nothing of gRPC, Envoy or Redis: headers
// arrive through the small [Headers] interface and answers leave as a [Response].
package providers
