package providers_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/envoy-keypool/envoy-keypool/providers"
)

type headerMap map[string]string

func (h headerMap) Get(name string) string { return h[name] }

func TestNew(t *testing.T) {
	for _, name := range providers.Names() {
		p, err := providers.New(name)
		if err != nil || p.Name() != name {
			t.Errorf("New(%q) = %v, %v", name, p, err)
		}
	}
	if _, err := providers.New("gemini-pro-max"); err == nil || !strings.Contains(err.Error(), "unknown provider") {
		t.Errorf("New(unknown) err = %v", err)
	}
}

func TestErrorBodiesEscapeMessages(t *testing.T) {
	msg := `pool "a\"b" </script> ` + "\n\x00"
	for _, p := range allProviders(t) {
		resp := p.ErrorResponse(providers.ErrorInfo{Status: 500, Kind: providers.ErrorMisconfigured, Message: msg})
		var body struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(resp.Body, &body); err != nil || body.Error.Message != msg {
			t.Errorf("%s: body %s does not carry the message intact: %v", p.Name(), resp.Body, err)
		}
	}
}
