package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
)

func listKeys(ctx context.Context, inv *invocation, stdout io.Writer) error {
	var listing admin.KeyListing
	body, _, err := inv.client.call(ctx, http.MethodGet, "/v1/keys", &listing)
	if err != nil {
		return err
	}
	if inv.output == "json" {
		return writeJSON(stdout, body)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tKEY\tHINT\tSTATE\tREASON\tUNTIL\tLEFT")
	for _, p := range listing.Pools {
		for _, k := range p.Keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, k.ID, k.Hint, k.State(), k.Reason, until(k.Until), left(k.Remaining))
		}
	}
	return tw.Flush()
}

func disableKey(ctx context.Context, inv *invocation, stdout io.Writer) error {
	path := keyPath(inv.args[0], inv.args[1], "disable")
	if inv.disableFor > 0 {
		path += "?for=" + url.QueryEscape(inv.disableFor.String())
	}
	return changeKey(ctx, inv, stdout, path, "disabled")
}

func enableKey(ctx context.Context, inv *invocation, stdout io.Writer) error {
	return changeKey(ctx, inv, stdout, keyPath(inv.args[0], inv.args[1], "enable"), "enabled")
}

func keyPath(pool, keyID, action string) string {
	return "/v1/pools/" + url.PathEscape(pool) + "/keys/" + url.PathEscape(keyID) + "/" + action
}

// changeKey posts a key action and prints the key's state after it.
func changeKey(ctx context.Context, inv *invocation, stdout io.Writer, path, done string) error {
	var answer admin.KeyChange
	body, code, err := inv.client.call(ctx, http.MethodPost, path, &answer)
	if err != nil {
		return err
	}
	if inv.output == "json" {
		return writeJSON(stdout, body)
	}
	poolName, keyID := inv.args[0], inv.args[1]
	for _, k := range answer.Keys {
		if k.ID != keyID {
			continue
		}
		fmt.Fprintf(stdout, "%s/%s %s: now %s", poolName, keyID, done, k.State())
		if k.Until != nil {
			fmt.Fprintf(stdout, " until %s", until(k.Until))
		}
		fmt.Fprintln(stdout)
	}
	if code == http.StatusAccepted {
		// The replica applied the change but could not reach the shared state: the
		// other replicas learn of it when it returns. The API's message says why.
		fmt.Fprintf(stdout, "note: %s\n", answer.Message)
	}
	return nil
}

func until(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func left(seconds float64) string {
	if seconds <= 0 {
		return ""
	}
	return (time.Duration(seconds) * time.Second).String()
}

// writeJSON prints the admin API's answer as it came, indented for reading.
func writeJSON(w io.Writer, body []byte) error {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
