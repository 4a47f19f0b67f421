package mockprovider

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Server is the mock provider: an [http.Handler] serving the provider APIs and the
// /_mock/ control API. Create it with [New]; it is safe for concurrent use.
type Server struct {
	mux *http.ServeMux

	mu        sync.Mutex          // protects the fields below
	behaviors map[string]Behavior // by credential value; stored clones, never mutated
	requests  []Request           // in the order they were answered
	seq       uint64              // numbers requests for their ids; never reset, so ids stay unique
}

// New returns a mock with no programmed key and no record.
func New() *Server {
	s := &Server{
		mux:       http.NewServeMux(),
		behaviors: make(map[string]Behavior),
	}
	s.mux.HandleFunc("POST /v1/chat/completions", s.providerHandler(openAIAPI{}))
	s.mux.HandleFunc("POST /v1/messages", s.providerHandler(anthropicAPI{}))
	s.mux.HandleFunc("POST /openai/deployments/{deployment}/chat/completions", s.providerHandler(azureAPI{}))
	s.mux.HandleFunc("POST /{version}/models/{action}", s.providerHandler(geminiAPI{}))
	azure, compatible := s.providerHandler(azureAPI{}), s.providerHandler(compatibleAPI{})
	// Azure's v1 API and Groq's base path are both /openai/v1: the credential header
	// tells them apart, as only Azure reads api-key.
	s.mux.HandleFunc("POST /openai/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Api-Key") != "" {
			azure(w, r)
			return
		}
		compatible(w, r)
	})
	// Every other …/chat/completions is the openai-compatible family's.
	s.mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/chat/completions") {
			http.NotFound(w, r)
			return
		}
		compatible(w, r)
	})
	s.routeControl(s.mux)
	return s
}

// ServeHTTP serves the provider APIs and the /_mock/ control API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// SetBehavior programs how requests carrying key are answered, replacing any earlier
// behaviour for it.
func (s *Server) SetBehavior(key string, b Behavior) error {
	return s.SetBehaviors(map[string]Behavior{key: b})
}

// SetBehaviors programs several keys at once: all of them, or none when one is invalid.
// Keys not named keep their behaviour.
func (s *Server) SetBehaviors(m map[string]Behavior) error {
	if err := validateBehaviors(m); err != nil {
		return fmt.Errorf("set behaviors: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, b := range m {
		s.behaviors[key] = b.clone()
	}
	return nil
}

// ClearBehavior makes key answer 200 again, like a key nobody programmed.
func (s *Server) ClearBehavior(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.behaviors, key)
}

// Behaviors returns a copy of every programmed behaviour, by key.
func (s *Server) Behaviors() map[string]Behavior {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Behavior, len(s.behaviors))
	for key, b := range s.behaviors {
		out[key] = b.clone()
	}
	return out
}

// behavior returns the behaviour for key; the zero Behavior (OK) when unprogrammed.
func (s *Server) behavior(key string) Behavior {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.behaviors[key]
}

// Requests returns a copy of the records of every provider request, in the order they
// were answered.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneRequests(s.requests)
}

// RequestsFor returns the records of the requests that carried key, in answer order.
func (s *Server) RequestsFor(key string) []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Request
	for _, r := range s.requests {
		if r.Key == key {
			out = append(out, cloneRequest(r))
		}
	}
	return out
}

// Counts returns how many recorded requests carried each key ("" for none).
func (s *Server) Counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int)
	for _, r := range s.requests {
		out[r.Key]++
	}
	return out
}

// ClearRequests forgets every record and keeps the behaviours.
func (s *Server) ClearRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
}

// Reset forgets every record and behaviour: every key answers 200 again.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
	clear(s.behaviors)
}

// nextID returns a fresh request id.
func (s *Server) nextID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return fmt.Sprintf("req_mock_%06d", s.seq)
}

// record appends r. Handlers call it before writing the answer, so that a client that
// has its answer always finds the record.
func (s *Server) record(r Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, r)
}

func cloneRequests(rs []Request) []Request {
	out := slices.Clone(rs)
	for i := range out {
		out[i] = cloneRequest(out[i])
	}
	return out
}

// cloneRequest deep-copies the header map, the only shared memory in a Request.
func cloneRequest(r Request) Request {
	if r.CredentialHeaders != nil {
		r.CredentialHeaders = r.CredentialHeaders.Clone()
	}
	return r
}
