// Package cli is the operator's side of the admin API: `envoy-keypool keys` and
// `envoy-keypool status`.
package cli

import (
	"context"
	"io"
)

// Main runs args (starting with "keys" or "status").
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) (string, bool)) int {
	return 2
}
