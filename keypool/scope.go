package keypool

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
)

// Scope names what a piece of key state is about: a whole key (Model is "") or one
// (key, model) pair. Provider rate limits are per model, so rate-limit classes cool
// the (key, model) scope when the model is known; credential and quota failures, and
// operator actions, are key-wide.
//
// A key serves a request for model M when neither its key-wide scope nor its (key, M)
// scope holds it back.
type Scope struct {
	// Ref is the key's [Key.Ref].
	Ref string
	// Model is a model name as [ModelName] bounds it; "" for the key-wide scope.
	Model string
}

// MaxModelLen is the longest model name kept as the client sent it. Longer names,
// and names with a character outside [A-Za-z0-9._:/@+-], are replaced by a hash, so
// a model name is always short and safe in a Redis key, a metric label or a URL.
const MaxModelLen = 64

// hashedModelPrefix starts every hashed model name; it is outside the kept alphabet,
// so a hashed name can never equal a kept one.
const hashedModelPrefix = "~"

// ModelName bounds a model name that came from a client: a name of at most
// MaxModelLen characters from [A-Za-z0-9._:/@+-] is kept as is (provider model names
// such as "gpt-4o-2024-08-06", "claude-sonnet-4-5@20250929" or
// "models/gemini-2.5-pro" are); any other non-empty name becomes "~" and 32 hex
// digits of its SHA-256, the same on every replica. Surrounding spaces are not
// trimmed: the caller passes the name as the request carried it.
//
// A kept name costs no allocation; a hashed one allocates.
func ModelName(model string) string {
	if model == "" || keptModel(model) {
		return model
	}
	sum := sha256.Sum256([]byte(model))
	return hashedModelPrefix + hex.EncodeToString(sum[:16])
}

func keptModel(s string) bool {
	if len(s) > MaxModelLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '_', c == ':', c == '/', c == '@', c == '+', c == '-':
		default:
			return false
		}
	}
	return true
}

// RequestKeyLen is the length of every [RequestKey].
const RequestKeyLen = 22

// RequestKey is the bounded, stable name of a request id in shared state: the
// base64url (no padding) of the first 16 bytes of its SHA-256, 22 characters
// whatever the id. Request ids come from a header a client may set (x-request-id),
// so they are never used as they are in a key name, and never kept at full length.
func RequestKey(requestID string) string {
	sum := sha256.Sum256([]byte(requestID))
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}
