// Package providers holds what differs between LLM providers: how a key is sent,
// which client credentials count as the client's own (BYOK), what an upstream answer
// means for the key that got it (its keypool.Class and the wait the provider asked
// for), what a successful answer says about the key's remaining limits, which model a
// request path names, and the error body a client of that provider's SDK understands.
//
// One file per provider: OpenAI, Anthropic, AzureOpenAI, Gemini, and Compatible (the
// OpenAI-compatible family, with presets for the APIs whose headers differ). A
// Provider is immutable; Build makes one from a Spec.
//
// Classification works from the status and headers alone, and is refined by the error
// body when the caller had Envoy buffer it (WantsBody says when that can matter). A
// body that is not JSON, truncated, larger than MaxErrorBody or of an unknown shape
// changes nothing. What the headers cannot tell (an OpenAI quota from a rate limit,
// Gemini's bad-key 400, a Gemini quota without retry headers) is listed in the README's
// Providers section and shown, case by case, by the header-only column of the
// classification tests.
//
// The package knows nothing of gRPC, Envoy or Redis: headers arrive through the small
// [Headers] interface and answers leave as a [Response].
package providers
