package extproc

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/envoy-keypool/envoy-keypool/providers"
)

// targetSet is one immutable snapshot of what the server serves, published through
// an atomic pointer (Server.SetTargets). A stream loads it once, when it starts, so
// it finishes on the targets it started with even when a reload swaps them.
type targetSet struct {
	byName map[string]*target
}

// target is a Target compiled for the hot path: everything a request needs that
// does not depend on the request is built here once, not per attempt.
type target struct {
	*Target
	name  string
	names requestNames
	// keys holds what is per key, by key ref.
	keys map[string]*keyTarget

	byok     prometheus.Counter
	depleted prometheus.Counter
	steered  prometheus.Counter
	attempts prometheus.Observer
	duration prometheus.Observer
}

// keyTarget is what the hot path needs of one key, built once.
type keyTarget struct {
	id string
	// auth sets the key's auth header. Shared by every answer that injects the key
	// and never modified: proto messages are safe for concurrent marshalling.
	auth     *corev3.HeaderValueOption
	authName string
	picks    prometheus.Counter
	last     *lastStatus // shared by the generations that keep the key's value
}

func (s *Server) compile(targets map[string]*Target) (*targetSet, error) {
	set := &targetSet{byName: make(map[string]*target, len(targets))}
	for name, t := range targets {
		if t == nil || t.Pool == nil || t.Provider == nil {
			return nil, fmt.Errorf("extproc: target %q is incomplete", name)
		}
		if t.ModelHeader != strings.ToLower(t.ModelHeader) {
			return nil, fmt.Errorf("extproc: target %q: model header %q must be lower case (Envoy sends header names in lower case)", name, t.ModelHeader)
		}
		ct := &target{Target: t, name: name, keys: map[string]*keyTarget{},
			byok:     s.metrics.byok.WithLabelValues(name),
			depleted: s.metrics.depleted.WithLabelValues(name),
			steered:  s.metrics.steered.WithLabelValues(name),
			attempts: s.metrics.attempts.WithLabelValues(name),
			duration: s.metrics.duration.WithLabelValues(name),
		}
		ct.names = requestNames{requestID: s.headers.RequestID, attempt: s.headers.AttemptCount, model: t.ModelHeader}
		copy(ct.names.credentials[:], providers.CredentialHeaders())
		for _, st := range t.Pool.Status() {
			k := st.Key
			auth := t.Provider.AuthHeader(k.Value())
			ct.keys[k.Ref()] = &keyTarget{
				id:       k.ID(),
				auth:     setHeader(auth.Name, auth.Value),
				authName: auth.Name,
				picks:    s.metrics.picks.WithLabelValues(name, k.ID()),
				last:     s.carriedLastStatus(name, k.Ref()),
			}
		}
		set.byName[name] = ct
	}
	return set, nil
}

// hasKeyID reports whether the target has a key with id (any value).
func (t *target) hasKeyID(id string) bool {
	for _, k := range t.keys {
		if k.id == id {
			return true
		}
	}
	return false
}

// carriedLastStatus is the last-status record of the key ref of pool in the targets
// served now, so that a reload keeps it; a new one for a key not served yet.
func (s *Server) carriedLastStatus(pool, ref string) *lastStatus {
	if cur := s.targets.Load(); cur != nil {
		if t := cur.byName[pool]; t != nil {
			if k := t.keys[ref]; k != nil {
				return k.last
			}
		}
	}
	return &lastStatus{}
}
