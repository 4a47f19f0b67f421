package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// client calls one replica's admin API.
type client struct {
	base  string
	token string
	http  *http.Client
}

// APIError is an answer of the admin API other than success.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string {
	switch e.Status {
	case http.StatusUnauthorized:
		return fmt.Sprintf("the admin API refused the token (%d %s): set %s or --token-file to the replica's admin.token",
			e.Status, http.StatusText(e.Status), EnvToken)
	}
	return fmt.Sprintf("the admin API answered %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// maxAnswer bounds what is read of an answer: the key listing of a large deployment
// is far below it.
const maxAnswer = 8 << 20

// call sends method path and decodes a 2xx JSON answer into out (when non-nil),
// returning the raw body and status too.
func (c *client) call(ctx context.Context, method, path string, out any) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("admin URL %q: %w", c.base, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is said once, below
		}
		return nil, 0, fmt.Errorf("cannot reach the admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, resp.StatusCode, fmt.Errorf("reading the answer of %s: %w", c.base, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e struct {
			Error string `json:"error"`
		}
		msg := string(bytes.TrimSpace(body))
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return body, resp.StatusCode, &APIError{Status: resp.StatusCode, Message: msg}
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return body, resp.StatusCode, fmt.Errorf("the answer of %s is not the admin API's JSON: %w", c.base, err)
		}
	}
	return body, resp.StatusCode, nil
}

// key is one key as /v1/keys lists it.
