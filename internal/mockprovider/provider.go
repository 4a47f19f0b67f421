package mockprovider

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// ReplyText is the assistant text of every OK answer, whole in JSON answers and split
// across deltas in streams.
const ReplyText = "hello from mock"

// replyPieces is ReplyText as streamed, several deltas so that clients really join them.
var replyPieces = []string{"hello", " from", " mock"}

// maxBodyBytes bounds a request body; chat requests of tests are far smaller.
const maxBodyBytes = 8 << 20

// providerAPI is what differs between the imitated providers; the flow of a request
// (credential, behaviour, delay, record, answer) is shared in providerHandler.
type providerAPI interface {
	provider() Provider
	// credential returns the credential the provider would authenticate, or "".
	credential(h http.Header) string
	// requestIDHeader is the response header the provider puts its request id in.
	requestIDHeader() string
	// missingCredential is the provider's 401 for a request with no credential.
	missingCredential() apiError
	// defaultError is the error the provider answers with for status.
	defaultError(status int) apiError
	// writeError writes status with e in the provider's error format.
	writeError(w http.ResponseWriter, requestID string, status int, e apiError)
	// writeReply writes the OK answer to req, as JSON or as an SSE stream.
	writeReply(w http.ResponseWriter, requestID string, req chatRequest)
}

// apiError is a provider error before it is put in the provider's format.
type apiError struct {
	Type    string
	Code    string // OpenAI only; "" is null
	Message string
}

// chatRequest is what the mock reads of a request body; everything else is ignored.
type chatRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// providerHandler serves one provider endpoint.
func (s *Server) providerHandler(api providerAPI) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := Request{
			ID:                s.nextID(),
			Time:              time.Now(),
			Provider:          api.provider(),
			Method:            r.Method,
			Path:              r.URL.Path,
			Key:               api.credential(r.Header),
			CredentialHeaders: collectCredentialHeaders(r.Header),
			QueryKey:          r.URL.Query().Get("key"),
			ClientRequestID:   r.Header.Get("X-Request-Id"),
			AttemptCount:      r.Header.Get("X-Envoy-Attempt-Count"),
		}
		body, bodyErr := readChatRequest(w, r)
		rec.Model, rec.Stream = body.Model, body.Stream
		w.Header().Set(api.requestIDHeader(), rec.ID)

		if rec.Key == "" {
			s.answerError(w, api, rec, http.StatusUnauthorized, api.missingCredential())
			return
		}

		b := s.behavior(rec.Key)
		if b.Delay > 0 && !wait(r, b.Delay) {
			// The client is gone, or the server is shutting down: the attempt happened,
			// and the response is aborted (the connection closed unanswered, the
			// documented meaning of this panic value) rather than left to net/http,
			// which would send a client still listening an empty 200.
			rec.Canceled = true
			s.record(rec)
			panic(http.ErrAbortHandler)
		}
		for name, value := range b.Headers {
			w.Header().Set(name, value)
		}

		switch {
		case b.isError():
			e := api.defaultError(b.Status)
			if b.ErrorType != "" {
				e.Type = b.ErrorType
			}
			if b.ErrorCode != "" {
				e.Code = b.ErrorCode
			}
			if b.Message != "" {
				e.Message = b.Message
			}
			s.answerError(w, api, rec, b.Status, e)
		case bodyErr != nil:
			s.answerError(w, api, rec, http.StatusBadRequest, apiError{
				Type:    "invalid_request_error",
				Message: bodyErr.Error(),
			})
		default:
			rec.Status = http.StatusOK
			s.record(rec)
			api.writeReply(w, rec.ID, body)
		}
	}
}

// answerError records rec with status, then writes the provider's error.
func (s *Server) answerError(w http.ResponseWriter, api providerAPI, rec Request, status int, e apiError) {
	rec.Status = status
	s.record(rec)
	api.writeError(w, rec.ID, status, e)
}

// readChatRequest decodes the fields of the body the mock cares about. A body that is
// not a JSON object is reported, not fatal: a programmed error key answers its error
// whatever the body, as providers check credentials and limits first.
func readChatRequest(w http.ResponseWriter, r *http.Request) (chatRequest, error) {
	var req chatRequest
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		return req, fmt.Errorf("read request body: %w", err)
	}
	if err := json.Unmarshal(data, &req); err != nil {
		return chatRequest{}, fmt.Errorf("request body is not a JSON object: %w", err)
	}
	return req, nil
}

// wait holds the answer back for d; it reports false when the request's context ended
// first.
func wait(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// bearerToken returns the token of an "Authorization: Bearer <token>" header, or "".
// The scheme is case-insensitive (RFC 9110, section 11.1).
func bearerToken(h http.Header) string {
	scheme, token, ok := strings.Cut(h.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// writeJSON answers status with v encoded as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		// Only the mock's own types are encoded here; failing is a bug in the mock.
		http.Error(w, fmt.Sprintf("mockprovider: encode answer: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
}

// errClientGone ends a stream whose client stopped reading.
var errClientGone = errors.New("client gone")

// sseWriter writes server-sent events, flushing each so clients see them one by one.
type sseWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

// startSSE sends the 200 and the event-stream headers.
func startSSE(w http.ResponseWriter) *sseWriter {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

// event writes one event: an "event:" line when name is set, then "data:" with data.
func (s *sseWriter) event(name string, data []byte) error {
	var b strings.Builder
	if name != "" {
		b.WriteString("event: " + name + "\n")
	}
	b.WriteString("data: ")
	b.Write(data)
	b.WriteString("\n\n")
	if _, err := io.WriteString(s.w, b.String()); err != nil {
		return fmt.Errorf("%w: %w", errClientGone, err)
	}
	if err := s.rc.Flush(); err != nil {
		return fmt.Errorf("%w: flush: %w", errClientGone, err)
	}
	return nil
}

// jsonEvent writes one event whose data is v encoded as JSON.
func (s *sseWriter) jsonEvent(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s event: %w", name, err)
	}
	return s.event(name, data)
}
