// Package mockprovider is a fake LLM provider for end-to-end tests, the demo and the
// docker-compose stack. It imitates the OpenAI Chat Completions API
// (POST /v1/chat/completions) and the Anthropic Messages API (POST /v1/messages)
// closely enough that the official Go SDKs (openai-go/v3, anthropic-sdk-go/v2) parse
// its answers, JSON and SSE streams alike, and its errors into their typed API errors.
//
// It owns three things:
//   - per-key behaviour: the answer (OK, or an error status with the provider's error
//     body and optional retry headers) and an optional delay, chosen by the credential
//     value the request carried; a key nobody programmed answers 200;
//   - a record of every provider request: which credential it carried, every
//     credential-bearing header and ?key= present, the status answered;
//   - the control of both, from Go ([Server]) or over HTTP under the reserved prefix
//     /_mock/ ([Client] speaks it), so that a mock in another process (docker-compose)
//     can be programmed and read the same way.
//
// It knows nothing of envoy-keypool: it is the provider at the far end, and tests judge
// envoy-keypool by what arrived here.
//
// Credentials are read as the providers read them: OpenAI from Authorization: Bearer;
// Anthropic from x-api-key, else Authorization: Bearer (anthropic-sdk-go/v2's
// option.WithAPIKey sends the latter). A request with no credential answers 401 in the
// provider's format.
package mockprovider
