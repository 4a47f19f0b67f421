package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// SecretRef says where a secret is read from: "env:NAME" (an environment variable)
// or "file:PATH" (a file's content, surrounding white space removed, as mounted
// Kubernetes or Docker secrets are). A literal value is refused: config files get
// copied, committed and printed.
type SecretRef string

// Environ looks up an environment variable, like os.LookupEnv.
type Environ func(name string) (string, bool)

// errLiteralSecret is the error for a secret written in the file itself.
var errLiteralSecret = errors.New(`must be "env:NAME" or "file:PATH"; secrets are never written in the config file`)

// Check reports a malformed reference without reading the secret.
func (r SecretRef) Check() error {
	kind, arg, ok := strings.Cut(string(r), ":")
	if !ok || (kind != "env" && kind != "file") {
		return errLiteralSecret
	}
	if strings.TrimSpace(arg) == "" {
		return fmt.Errorf("%s: reference names nothing", kind)
	}
	return nil
}

// Resolve reads the secret. The error never contains the secret.
func (r SecretRef) Resolve(env Environ) (string, error) {
	if err := r.Check(); err != nil {
		return "", err
	}
	kind, arg, _ := strings.Cut(string(r), ":")
	var value string
	switch kind {
	case "env":
		v, ok := env(arg)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", arg)
		}
		value = v
	case "file":
		data, err := os.ReadFile(arg)
		if err != nil {
			return "", fmt.Errorf("read secret file: %w", err)
		}
		value = string(data)
	}
	value = strings.TrimSpace(value)
	if value == "" {
		return "", fmt.Errorf("%s is empty", r)
	}
	return value, nil
}
