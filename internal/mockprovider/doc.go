// Package mockprovider is a fake LLM provider for end-to-end tests, the demo and the
// docker-compose stack. It imitates, closely enough that the official Go SDKs
// (openai-go/v3 also configured for Azure, anthropic-sdk-go/v2, google.golang.org/genai)
// parse its answers, JSON and streams alike, and its errors into their typed API
// errors:
//   - OpenAI Chat Completions, POST /v1/chat/completions;
//   - Anthropic Messages, POST /v1/messages;
//   - Azure OpenAI, POST /openai/deployments/{deployment}/chat/completions and the v1
//     API's /openai/v1/chat/completions (with api-key);
//   - Gemini, POST /{version}/models/{model}:generateContent and
//     :streamGenerateContent (SSE with ?alt=sse, else a JSON array);
//   - the openai-compatible family, POST …/chat/completions under any other base path.
//
// It owns three things:
//   - per-key behaviour: the answer (OK, or an error status with the provider's error
//     body, a documented failure of a class, or a raw body), retry and rate-limit
//     headers, an optional delay, and per-model overrides, chosen by the credential
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
// Credentials are read as the providers read them: OpenAI and the compatible family
// from Authorization: Bearer; Anthropic from x-api-key, else Authorization: Bearer
// (anthropic-sdk-go/v2's option.WithAPIKey sends the latter); Azure from api-key, else
// Authorization: Bearer; Gemini from x-goog-api-key, else ?key=. A request with no
// credential answers the provider's own refusal (401; Gemini's 403 PERMISSION_DENIED).
package mockprovider
