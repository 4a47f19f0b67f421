package keypool

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
)

// Key is one API key of a pool. Its value stays in process memory: every way of
// printing or encoding a Key (fmt verbs, JSON, logs) shows only its id and a masked
// hint.
type Key struct {
	id    string
	hint  string
	ref   string
	value string
}

// hintSuffixLen is how many trailing characters of a key value a hint shows. Long
// provider keys (40+ random characters) keep plenty of secret entropy after it.
const hintSuffixLen = 4

// minHintedLen is the shortest value whose hint shows any of its characters: below it
// the suffix would be too large a part of the secret.
const minHintedLen = 16

// NewKey returns the key id of pool with the given secret value.
func NewKey(pool, id, value string) Key {
	return Key{id: id, hint: maskedHint(value), ref: id + "#" + fingerprint(pool, id, value), value: value}
}

// ID is the operator-chosen name of the key, unique in its pool.
func (k Key) ID() string { return k.id }

// Hint is a masked form of the value ("…AbCd") that lets an operator tell keys apart.
func (k Key) Hint() string { return k.hint }

// Ref names the key in shared state: its id and a fingerprint of its value, so a
// rotated value behind the same id starts with a clean state. The fingerprint is an
// HMAC keyed with the value itself: it reveals nothing of the value.
func (k Key) Ref() string { return k.ref }

// Value is the secret, for the one place that injects it into a request header.
func (k Key) Value() string { return k.value }

// String shows the id and hint only.
func (k Key) String() string { return k.id + " (" + k.hint + ")" }

// GoString keeps %#v from printing the value.
func (k Key) GoString() string { return "keypool.Key{" + k.String() + "}" }

// MarshalJSON encodes the id and hint only.
func (k Key) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ID   string `json:"id"`
		Hint string `json:"hint"`
	}{k.id, k.hint})
}

func maskedHint(value string) string {
	if len(value) < minHintedLen {
		return "…"
	}
	return "…" + value[len(value)-hintSuffixLen:]
}

func fingerprint(pool, id, value string) string {
	mac := hmac.New(sha256.New, []byte(value))
	mac.Write([]byte("envoy-keypool/v1\x00" + pool + "\x00" + id))
	return hex.EncodeToString(mac.Sum(nil)[:6])
}
