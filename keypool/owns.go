package keypool

import (
	"crypto/subtle"
	"hash/maphash"
)

// ownership finds whether a credential value is one of a pool's keys without a
// copy of the values: a keyed fingerprint routes the value to the keys it may be,
// and a constant-time comparison decides.
type ownership struct {
	seed   maphash.Seed
	byHash map[uint64][]int32
}

func newOwnership(keys []Key) ownership {
	o := ownership{seed: maphash.MakeSeed(), byHash: make(map[uint64][]int32, len(keys))}
	for i, k := range keys {
		h := maphash.String(o.seed, k.value)
		o.byHash[h] = append(o.byHash[h], int32(i))
	}
	return o
}

// Owns reports whether value is the value of one of the pool's keys. BYOK needs it:
// Envoy's request-header map is shared by all attempts of a request, so on a retry
// the credential header holds the key an earlier attempt injected, which must not
// be taken for the client's own.
//
// The fingerprint is keyed with a random seed per pool, so its timing tells an
// attacker nothing they could steer; the decision is a constant-time comparison.
// It allocates nothing.
func (p *Pool) Owns(value string) bool {
	if value == "" {
		return false
	}
	found := 0
	for _, i := range p.owned.byHash[maphash.String(p.owned.seed, value)] {
		found |= constantTimeEqual(value, p.keys[i].value)
	}
	return found == 1
}

// constantTimeEqual is 1 when a == b, in a time that depends only on the lengths.
func constantTimeEqual(a, b string) int {
	if len(a) != len(b) {
		return 0
	}
	var v byte
	for i := 0; i < len(a); i++ {
		v |= a[i] ^ b[i]
	}
	return subtle.ConstantTimeByteEq(v, 0)
}
