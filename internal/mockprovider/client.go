package mockprovider

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

// Client programs and reads a mock running in another process through its /_mock/
// API: the same operations as [Server], for the docker-compose stack and e2e tests.
type Client struct {
	// BaseURL is the mock's root, e.g. "http://mock-openai:8080". Required.
	BaseURL string
	// HTTPClient sends the requests. Default http.DefaultClient.
	HTTPClient *http.Client
}

// SetBehavior programs how requests carrying key are answered.
func (c *Client) SetBehavior(ctx context.Context, key string, b Behavior) error {
	return c.do(ctx, http.MethodPut, "keys/"+url.PathEscape(key), b, nil)
}

// SetBehaviors programs several keys at once.
func (c *Client) SetBehaviors(ctx context.Context, m map[string]Behavior) error {
	return c.do(ctx, http.MethodPost, "keys", m, nil)
}

// ClearBehavior makes key answer 200 again.
func (c *Client) ClearBehavior(ctx context.Context, key string) error {
	return c.do(ctx, http.MethodDelete, "keys/"+url.PathEscape(key), nil, nil)
}

// Behaviors returns every programmed behaviour, by key.
func (c *Client) Behaviors(ctx context.Context) (map[string]Behavior, error) {
	var m map[string]Behavior
	err := c.do(ctx, http.MethodGet, "keys", nil, &m)
	return m, err
}

// Requests returns the records of every provider request, in answer order.
func (c *Client) Requests(ctx context.Context) ([]Request, error) {
	var rs []Request
	err := c.do(ctx, http.MethodGet, "requests", nil, &rs)
	return rs, err
}

// RequestsFor returns the records of the requests that carried key.
func (c *Client) RequestsFor(ctx context.Context, key string) ([]Request, error) {
	var rs []Request
	err := c.do(ctx, http.MethodGet, "requests?key="+url.QueryEscape(key), nil, &rs)
	return rs, err
}

// Counts returns how many recorded requests carried each key.
func (c *Client) Counts(ctx context.Context) (map[string]int, error) {
	var m map[string]int
	err := c.do(ctx, http.MethodGet, "counts", nil, &m)
	return m, err
}

// ClearRequests forgets every record and keeps the behaviours.
func (c *Client) ClearRequests(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, "requests", nil, nil)
}

// Reset forgets every record and behaviour.
func (c *Client) Reset(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "reset", nil, nil)
}

// ErrControl is wrapped by errors the mock's control API answered.
var ErrControl = errors.New("mock control API error")

// do sends one control request: in, if not nil, as the JSON body; a JSON answer
// decoded into out, if not nil.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("mock %s %s: encode: %w", method, path, err)
		}
		body = bytes.NewReader(data)
	}
	base, err := url.JoinPath(c.BaseURL, ControlPrefix)
	if err != nil {
		return fmt.Errorf("mock base URL: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return fmt.Errorf("mock %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("mock %s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	if res.StatusCode >= 300 {
		var ce controlError
		data, _ := io.ReadAll(io.LimitReader(res.Body, maxControlBodyBytes))
		if json.Unmarshal(data, &ce) != nil || ce.Error == "" {
			ce.Error = string(data)
		}
		return fmt.Errorf("mock %s %s: %w: %s: %s", method, path, ErrControl, res.Status, ce.Error)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(res.Body).Decode(out); err != nil {
		return fmt.Errorf("mock %s %s: decode answer: %w", method, path, err)
	}
	return nil
}
