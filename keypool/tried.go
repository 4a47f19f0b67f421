package keypool

import (
	"hash/maphash"
	"slices"
	"sync"
	"time"
)

// TriedSet remembers, per request, the keys that failed for it: the one
// implementation of the tried set, used by MemoryState and by package redisstate
// for what a replica saw while Redis was unreachable. It is safe for concurrent
// use.
//
// A request's set lives from its first failure until Forget (the request ended) or
// until TTL has passed since its last failure, whichever comes first. Memory is
// released without a scan: each shard keeps two generations of requests and drops
// the older one wholesale when the newer is a TTL old, so a request's memory is
// gone at most two TTLs after its last failure, and no operation costs more than a
// few map operations under one shard's lock. Request ids are kept only as a 128-bit
// keyed hash, whatever their length.
type TriedSet struct {
	ttl    time.Duration
	seeds  [2]maphash.Seed
	shards [triedShards]triedShard
}

const triedShards = 16

type triedShard struct {
	mu      sync.Mutex // protects the fields below
	started time.Time  // when cur began
	cur     map[triedKey]*triedEntry
	prev    map[triedKey]*triedEntry
}

type triedKey [2]uint64

type triedEntry struct {
	last time.Time // the request's last failure
	refs []string
}

// NewTriedSet returns an empty TriedSet whose sets expire ttl after their last
// failure; zero means DefaultTriedTTL.
func NewTriedSet(ttl time.Duration) *TriedSet {
	if ttl <= 0 {
		ttl = DefaultTriedTTL
	}
	s := &TriedSet{ttl: ttl, seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}}
	for i := range s.shards {
		s.shards[i].cur = make(map[triedKey]*triedEntry)
	}
	return s
}

// TTL is how long a set outlives its request's last failure.
func (s *TriedSet) TTL() time.Duration { return s.ttl }

func (s *TriedSet) key(pool, requestID string) triedKey {
	var k triedKey
	for i, seed := range s.seeds {
		var h maphash.Hash
		h.SetSeed(seed)
		h.WriteString(pool)
		h.WriteByte(0)
		h.WriteString(requestID)
		k[i] = h.Sum64()
	}
	return k
}

func (s *TriedSet) shard(k triedKey) *triedShard { return &s.shards[k[0]%triedShards] }

// rotateLocked starts a new generation when the current one is a TTL old: the
// previous one then holds only requests whose last failure is more than a TTL ago.
func (sh *triedShard) rotateLocked(t time.Time, ttl time.Duration) {
	if t.Sub(sh.started) < ttl {
		return
	}
	if t.Sub(sh.started) >= 2*ttl {
		sh.prev = nil // every entry of cur is older than a TTL too
	} else {
		sh.prev = sh.cur
	}
	sh.cur = make(map[triedKey]*triedEntry)
	sh.started = t
}

// Add records that ref failed for requestID at t, and returns the request's tried
// refs, ref included (a copy the caller owns). An empty requestID records nothing.
func (s *TriedSet) Add(pool, requestID, ref string, t time.Time) []string {
	if requestID == "" {
		return nil
	}
	k := s.key(pool, requestID)
	sh := s.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.rotateLocked(t, s.ttl)
	e := sh.cur[k]
	if e == nil {
		if old := sh.prev[k]; old != nil {
			delete(sh.prev, k)
			if t.Sub(old.last) < s.ttl {
				e = old
			}
		}
		if e == nil {
			e = &triedEntry{}
		}
		sh.cur[k] = e
	}
	if !slices.Contains(e.refs, ref) {
		e.refs = append(e.refs, ref)
	}
	e.last = t
	return slices.Clone(e.refs)
}

// Get returns the refs that failed for requestID and are still remembered at t
// (a copy the caller owns); nil when none.
func (s *TriedSet) Get(pool, requestID string, t time.Time) []string {
	if requestID == "" {
		return nil
	}
	k := s.key(pool, requestID)
	sh := s.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.rotateLocked(t, s.ttl)
	e := sh.cur[k]
	if e == nil {
		e = sh.prev[k]
	}
	if e == nil || t.Sub(e.last) >= s.ttl {
		return nil
	}
	return slices.Clone(e.refs)
}

// Forget drops requestID's set.
func (s *TriedSet) Forget(pool, requestID string) {
	if requestID == "" {
		return
	}
	k := s.key(pool, requestID)
	sh := s.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	delete(sh.cur, k)
	delete(sh.prev, k)
}

// Len is the number of requests whose sets are held in memory, expired ones not
// yet dropped included.
func (s *TriedSet) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.cur) + len(sh.prev)
		sh.mu.Unlock()
	}
	return n
}
