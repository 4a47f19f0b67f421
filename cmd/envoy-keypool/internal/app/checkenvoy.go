package app

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/envoy-keypool/envoy-keypool/config"
	"github.com/envoy-keypool/envoy-keypool/envoy"
)

// checkEnvoy is `envoy-keypool check-envoy --config FILE [-o text|json] ENVOY_FILE`:
// the checks of package envoy on an Envoy configuration that envoy-keypool did not
// generate (hand-written, mesh- or gateway-generated): a bootstrap in YAML or JSON, or
// the JSON of Envoy's admin /config_dump (`curl localhost:9901/config_dump`). It
// prints one line per problem, the field path first, and exits 0 when there is none,
// 1 when there are, and 2 when it could not check: bad flags, an unreadable or
// invalid envoy-keypool config, or a file that is no Envoy configuration it can read.
func checkEnvoy(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-envoy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "envoy-keypool configuration file (required; its secrets are not read)")
	format := fs.String("o", "text", "output: text (one problem a line) or json (a list of {path, message})")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: envoy-keypool check-envoy --config FILE [-o text|json] ENVOY_FILE")
		fs.PrintDefaults()
	}
	// Flags may come before or after the Envoy file.
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	var files []string
	for fs.NArg() > 0 {
		files = append(files, fs.Arg(0))
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return exitUsage
		}
	}
	if *cfgPath == "" || len(files) != 1 || (*format != "text" && *format != "json") {
		fs.Usage()
		return exitUsage
	}
	cfg, err := config.LoadWithoutSecrets(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "envoy-keypool check-envoy: invalid configuration:\n%s\n", indent(err))
		return exitUsage
	}
	ec, err := envoy.LoadEnvoyConfig(files[0])
	if err != nil {
		fmt.Fprintf(stderr, "envoy-keypool check-envoy: %v\n", err)
		return exitUsage
	}
	var checks []error
	if ec.Routes == nil { // a bootstrap file, which Envoy would validate when loading it
		checks = append(checks, ec.Validate())
	}
	checks = append(checks, ec.CheckLoad(), ec.CheckKeypool(cfg))
	problems := dedupe(envoy.Problems(errors.Join(checks...)))

	if *format == "json" {
		out := []jsonProblem{}
		for _, p := range problems {
			out = append(out, jsonProblem{Path: p.Path, Message: p.Message})
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "envoy-keypool check-envoy: %v\n", err)
			return exitFailed
		}
	} else {
		for _, p := range problems {
			fmt.Fprintln(stdout, p.Error())
		}
	}
	what := "bootstrap"
	if ec.Routes != nil {
		what = "config dump"
		if ec.Version != "" {
			what += " of Envoy " + ec.Version
		}
	}
	if len(problems) > 0 {
		fmt.Fprintf(stderr, "%s (%s): %d problems for envoy-keypool (%s)\n", files[0], what, len(problems), *cfgPath)
		return exitFailed
	}
	fmt.Fprintf(stderr, "%s (%s): no problems for envoy-keypool (%s)\n", files[0], what, *cfgPath)
	return exitOK
}

type jsonProblem struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

// dedupe drops a problem reported twice (CheckLoad and CheckKeypool both report a
// typed config that does not decode).
func dedupe(ps []*envoy.Problem) []*envoy.Problem {
	seen := map[string]bool{}
	var out []*envoy.Problem
	for _, p := range ps {
		if !seen[p.Error()] {
			seen[p.Error()] = true
			out = append(out, p)
		}
	}
	return out
}
