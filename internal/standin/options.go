package standin

import (
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"time"
)

// Options tune a Proxy for tests and local runs. The zero value runs the bootstrap as
// written, quietly.
type Options struct {
	// ListenAddr overrides the listener's socket address, e.g. "127.0.0.1:0".
	// Default: the bootstrap's first listener address.
	ListenAddr string
	// Endpoints overrides a cluster's endpoints by cluster name, each "host:port".
	// Default: the clusters' load_assignment endpoints.
	Endpoints map[string][]string
	// RootCAs replaces the trusted CA of upstream TLS validation contexts.
	// Default: the CA the bootstrap names (or no verification when it names none, as
	// in Envoy).
	RootCAs *x509.CertPool
	// Log receives one line per stand-in event (retries, health changes, local
	// replies). Default: nil, quiet.
	Log io.Writer
	// Rand returns uniformly random numbers for back-off jitter; tests set it to make
	// delays predictable. Default: math/rand/v2.
	Rand func() uint64
	// Now is the clock used to read rate-limit reset timestamps. Default: time.Now.
	Now func() time.Time
	// HonourAppendAction makes ext_proc header mutations follow
	// HeaderValueOption.append_action. Envoy up to at least 1.38 ignores append_action
	// in ext_proc and reads only the deprecated `append` (default false: overwrite);
	// the stand-in does the same unless this is set. Default: false.
	HonourAppendAction bool
}

func (o Options) withDefaults() Options {
	if o.Rand == nil {
		o.Rand = rand.Uint64
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// logf writes one line to Options.Log. After Close nothing is written: streams and
// dials still winding down must not write to a log their owner closed.
func (p *Proxy) logf(format string, args ...any) {
	if p.opts.Log == nil {
		return
	}
	p.logMu.Lock()
	defer p.logMu.Unlock()
	if p.logClosed {
		return
	}
	_, _ = fmt.Fprintf(p.opts.Log, "envoy-standin: "+format+"\n", args...)
}
