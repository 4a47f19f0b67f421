package mockprovider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
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
	credential(r *http.Request) string
	// fromPath fills in what the provider reads from the path (Gemini's model and
	// streaming, Azure's deployment).
	fromPath(r *http.Request, req *chatRequest)
	// requestIDHeader is the response header the provider puts its request id in.
	requestIDHeader() string
	// missingCredential is the provider's answer to a request with no credential.
	missingCredential() (int, apiError)
	// defaultError is the error the provider answers with for status.
	defaultError(status int) apiError
	// failure is the provider's documented answer for a failure of [Failures].
	failure(name string, req chatRequest, retryDelay time.Duration) (int, apiError)
	// errorBody is e in the provider's error format, ready for JSON encoding.
	errorBody(requestID string, status int, e apiError) any
	// rateLimitHeaders writes rl in the provider's own headers, at now.
	rateLimitHeaders(h http.Header, rl RateLimit, now time.Time)
	// writeReply writes the OK answer to req, as JSON or as an SSE stream.
	writeReply(w http.ResponseWriter, requestID string, req chatRequest)
}

// apiError is a provider error before it is put in the provider's format.
type apiError struct {
	Type    string // OpenAI and Anthropic error.type, Gemini error.status
	Code    string // OpenAI and Azure error.code, Gemini's ErrorInfo reason; "" is none
	Message string
	// RetryDelay is Gemini's RetryInfo.retryDelay; zero sends none.
	RetryDelay time.Duration
	// QuotaID is the quotaId of Gemini's QuotaFailure violation; "" sends none.
	QuotaID string
	// Model is the model a Gemini QuotaFailure names.
	Model string
	// RetryAfter is sent as a Retry-After header (whole seconds) unless the
	// behaviour's headers set one; zero sends none.
	RetryAfter time.Duration
}

// chatRequest is what the mock reads of a request body (and, for some providers, its
// path); everything else is ignored.
type chatRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`

	// sse is Gemini's ?alt=sse: a stream as server-sent events rather than a JSON array.
	sse bool
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
			Query:             r.URL.RawQuery,
			Key:               api.credential(r),
			CredentialHeaders: collectCredentialHeaders(r.Header),
			QueryKey:          r.URL.Query().Get("key"),
			ClientRequestID:   r.Header.Get("X-Request-Id"),
			AttemptCount:      r.Header.Get("X-Envoy-Attempt-Count"),
		}
		body, bodyErr := readChatRequest(w, r)
		api.fromPath(r, &body)
		rec.Model, rec.Stream = body.Model, body.Stream
		w.Header().Set(api.requestIDHeader(), rec.ID)

		if rec.Key == "" {
			status, e := api.missingCredential()
			s.answerError(w, api, rec, status, e, Behavior{})
			return
		}

		b := s.behavior(rec.Key).forModel(rec.Model)
		if b.Delay > 0 && !wait(r, b.Delay) {
			// The client is gone, or the server is shutting down: the attempt happened,
			// and the response is aborted (the connection closed unanswered, the
			// documented meaning of this panic value) rather than left to net/http,
			// which would send a client still listening an empty 200.
			rec.Canceled = true
			s.record(rec)
			panic(http.ErrAbortHandler)
		}
		if b.RateLimit != nil {
			api.rateLimitHeaders(w.Header(), *b.RateLimit, time.Now())
		}
		for name, value := range b.Headers {
			w.Header().Set(name, value)
		}

		switch {
		case b.isError():
			status, e := b.Status, api.defaultError(b.Status)
			if b.Failure != "" {
				var fs int
				fs, e = api.failure(b.Failure, body, b.RetryDelay)
				if status == 0 {
					status = fs
				}
			} else if b.RetryDelay > 0 {
				e.RetryDelay = b.RetryDelay
			}
			if b.ErrorType != "" {
				e.Type = b.ErrorType
			}
			if b.ErrorCode != "" {
				e.Code = b.ErrorCode
			}
			if b.Message != "" {
				e.Message = b.Message
			}
			s.answerError(w, api, rec, status, e, b)
		case bodyErr != nil:
			s.answerError(w, api, rec, http.StatusBadRequest, apiError{
				Type:    "invalid_request_error",
				Message: bodyErr.Error(),
			}, Behavior{})
		default:
			rec.Status = http.StatusOK
			s.record(rec)
			api.writeReply(w, rec.ID, body)
		}
	}
}

// answerError records rec with status, then writes the provider's error, or b's raw
// body, padded to b's BodySize.
func (s *Server) answerError(w http.ResponseWriter, api providerAPI, rec Request, status int, e apiError, b Behavior) {
	if e.RetryAfter > 0 && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", strconv.FormatInt(int64((e.RetryAfter+time.Second-1)/time.Second), 10))
	}
	rec.Status = status
	s.record(rec)
	data := []byte(b.Body)
	if b.Body == "" {
		var err error
		if data, err = json.Marshal(api.errorBody(rec.ID, status, e)); err != nil {
			// Only the mock's own types are encoded here; failing is a bug in the mock.
			http.Error(w, fmt.Sprintf("mockprovider: encode error: %v", err), http.StatusInternalServerError)
			return
		}
		data = append(data, '\n')
	}
	if pad := b.BodySize - len(data); pad > 0 {
		data = append(data, bytes.Repeat([]byte{' '}, pad)...) // trailing white space keeps JSON valid
	}
	writeBody(w, status, data)
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
	writeBody(w, status, append(data, '\n'))
}

// writeBody answers status with a JSON body (unless a behaviour's headers name another
// type) and its Content-Length, as providers send their error bodies: a proxy can
// decide from the headers alone whether to buffer one.
func writeBody(w http.ResponseWriter, status int, data []byte) {
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	_, _ = w.Write(data)
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
