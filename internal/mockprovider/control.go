package mockprovider

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// ControlPrefix is the path prefix reserved for the control API; no provider path
// starts with it.
const ControlPrefix = "/_mock/"

// maxControlBodyBytes bounds a control request body; behaviours are small.
const maxControlBodyBytes = 1 << 20

// routeControl registers the /_mock/ API, the HTTP face of the Go API:
//
//	GET    /_mock/healthz         200 {"status":"ok"} (for compose health checks)
//	GET    /_mock/keys            200 {key: Behavior}            Behaviors
//	POST   /_mock/keys            {key: Behavior} → 204          SetBehaviors
//	GET    /_mock/keys/{key}      200 Behavior, 404 if unset
//	PUT    /_mock/keys/{key}      Behavior → 204                 SetBehavior
//	DELETE /_mock/keys/{key}      204                            ClearBehavior
//	GET    /_mock/requests        200 [Request]; ?key=K filters  Requests, RequestsFor
//	DELETE /_mock/requests        204                            ClearRequests
//	GET    /_mock/counts          200 {key: n}                   Counts
//	POST   /_mock/reset           204                            Reset
//
// Errors answer 400 or 404 with {"error": message}. {key} is one path segment, so a
// key holding "/" must be escaped (%2F).
func (s *Server) routeControl(mux *http.ServeMux) {
	mux.HandleFunc("GET /_mock/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /_mock/keys", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Behaviors())
	})
	mux.HandleFunc("POST /_mock/keys", func(w http.ResponseWriter, r *http.Request) {
		m, err := DecodeBehaviors(http.MaxBytesReader(w, r.Body, maxControlBodyBytes))
		if err == nil {
			err = s.SetBehaviors(m)
		}
		answerControl(w, err)
	})
	mux.HandleFunc("GET /_mock/keys/{key}", func(w http.ResponseWriter, r *http.Request) {
		b, ok := s.Behaviors()[r.PathValue("key")]
		if !ok {
			writeControlError(w, http.StatusNotFound, errors.New("no behavior programmed for this key"))
			return
		}
		writeJSON(w, http.StatusOK, b)
	})
	mux.HandleFunc("PUT /_mock/keys/{key}", func(w http.ResponseWriter, r *http.Request) {
		var b Behavior
		err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxControlBodyBytes)).Decode(&b)
		if err != nil {
			err = fmt.Errorf("decode behavior: %w", err)
		} else {
			err = s.SetBehavior(r.PathValue("key"), b)
		}
		answerControl(w, err)
	})
	mux.HandleFunc("DELETE /_mock/keys/{key}", func(w http.ResponseWriter, r *http.Request) {
		s.ClearBehavior(r.PathValue("key"))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /_mock/requests", func(w http.ResponseWriter, r *http.Request) {
		reqs := s.Requests()
		if q := r.URL.Query(); q.Has("key") {
			reqs = s.RequestsFor(q.Get("key"))
		}
		if reqs == nil {
			reqs = []Request{} // [] rather than null: scripts can always iterate
		}
		writeJSON(w, http.StatusOK, reqs)
	})
	mux.HandleFunc("DELETE /_mock/requests", func(w http.ResponseWriter, _ *http.Request) {
		s.ClearRequests()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /_mock/counts", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Counts())
	})
	mux.HandleFunc("POST /_mock/reset", func(w http.ResponseWriter, _ *http.Request) {
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
}

// answerControl answers 204 when a change succeeded, else 400 with the error.
func answerControl(w http.ResponseWriter, err error) {
	if err != nil {
		writeControlError(w, http.StatusBadRequest, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// controlError is the body of a failed control request.
type controlError struct {
	Error string `json:"error"`
}

func writeControlError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, controlError{Error: err.Error()})
}
