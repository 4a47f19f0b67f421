package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/envoy-keypool/envoy-keypool/cmd/envoy-keypool/internal/admin"
)

// status prints the replica's readiness, version, configuration and pools. It
// reports a degraded or draining replica without failing: the exit code says only
// whether the replica answered.
func status(ctx context.Context, inv *invocation, stdout io.Writer) error {
	var st admin.Status
	body, _, err := inv.client.call(ctx, http.MethodGet, "/v1/status", &st)
	if err != nil {
		return err
	}
	if inv.output == "json" {
		return writeJSON(stdout, body)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	readiness := st.Readiness
	if st.Reason != "" {
		readiness += " (" + st.Reason + ")"
	}
	fmt.Fprintf(tw, "replica\t%s\n", inv.client.base)
	fmt.Fprintf(tw, "version\t%s\n", st.Version)
	fmt.Fprintf(tw, "readiness\t%s\n", readiness)
	fmt.Fprintf(tw, "state\t%s\n", st.StateBackend)
	fmt.Fprintf(tw, "started\t%s (up %s)\n", st.Started.UTC().Format(time.RFC3339), st.Now.Sub(st.Started).Truncate(time.Second))
	config := "loaded " + st.ConfigLoaded.UTC().Format(time.RFC3339)
	if st.LastReloadError != "" {
		config += "; last reload refused: " + st.LastReloadError
	}
	fmt.Fprintf(tw, "config\t%s\n", config)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tPROVIDER\tAVAILABLE\tKEY\tSTATE\tREASON\tLEFT\tLAST STATUS")
	for _, p := range st.Pools {
		for i, k := range p.Keys {
			name, provider, avail := p.Name, p.Provider, fmt.Sprintf("%d/%d", p.Available, len(p.Keys))
			if i > 0 {
				name, provider, avail = "", "", ""
			}
			last := ""
			if k.LastStatus != nil {
				last = fmt.Sprintf("%d (%s ago)", k.LastStatus.Code, st.Now.Sub(k.LastStatus.At).Truncate(time.Second))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, provider, avail, k.ID, k.State, k.Reason, left(k.SecondsLeft), last)
		}
	}
	return tw.Flush()
}
