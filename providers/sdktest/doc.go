// Package sdktest checks package providers against the official SDKs of the providers
// (openai-go/v3, also configured for Azure; anthropic-sdk-go/v2; google.golang.org/genai):
// an exhaustion answer is right when the SDK reads it as its typed API error with the
// expected status, type and message, and honours its Retry-After; a request the SDK
// sends is read by the provider as the SDK meant it (credential, model).
//
// It has only tests. It lives apart from package providers so that the providers' test
// binary, which the fuzz targets instrument, does not compile the SDKs.
package sdktest
