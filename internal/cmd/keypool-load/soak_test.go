package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// decodesAsSVG reports whether the file is well-formed XML whose root is <svg>.
func decodesAsSVG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := xml.NewDecoder(f)
	var root string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s is not well-formed XML: %v", path, err)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Errorf("%s: root element %q, want svg", path, root)
	}
}

func TestSoakPlotIsWrittenAndDecodes(t *testing.T) {
	samples := []soakSample{
		{At: 10, RSSBytes: 30 << 20, Goroutines: 80, P99us: 900},
		{At: 20, RSSBytes: 31 << 20, Goroutines: 82, P99us: 1100},
		{At: 30, RSSBytes: 31 << 20, Goroutines: 81, P99us: 950},
	}
	dir := t.TempDir()
	pngPath := filepath.Join(dir, "soak.png")
	if err := writeSoakPlot(pngPath, "test", samples); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatalf("the PNG does not decode: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 400 {
		t.Errorf("PNG is %dx%d, want a readable size", b.Dx(), b.Dy())
	}
	svgPath := filepath.Join(dir, "soak.svg")
	if err := writeSoakPlot(svgPath, "test", samples); err != nil {
		t.Fatal(err)
	}
	decodesAsSVG(t, svgPath)
	data, _ := os.ReadFile(svgPath)
	for _, label := range []string{"RSS (MiB)", "goroutines", "message p99 (ms)"} {
		if !bytes.Contains(data, []byte(label)) {
			t.Errorf("SVG lacks the %q panel", label)
		}
	}
	if err := writeSoakPlot(filepath.Join(dir, "soak.pdf"), "test", samples); err == nil || !strings.Contains(err.Error(), ".png or .svg") {
		t.Errorf("a .pdf: err = %v, want the formats named", err)
	}
}

func TestSoakSamplesTheServerUnderLoad(t *testing.T) {
	keypoolBin := buildKeypool(t)
	states := []string{"memory"}
	if _, err := exec.LookPath("redis-server"); err == nil {
		states = append(states, "redis")
	}
	for _, state := range states {
		t.Run(state, func(t *testing.T) {
			dir := t.TempDir()
			plotPath, jsonPath := filepath.Join(dir, "soak.svg"), filepath.Join(dir, "soak.json")
			var stdout, stderr bytes.Buffer
			args := []string{"--keypool-bin", keypoolBin, "--state", state, "--duration", "900ms", "--interval", "300ms",
				"--rate", "300", "--concurrency", "4", "--keys", "2", "--plot", plotPath, "--json", jsonPath}
			if err := runSoak(context.Background(), args, &stdout, &stderr); err != nil {
				t.Fatalf("soak: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
			}
			decodesAsSVG(t, plotPath)
			var samples []soakSample
			data, err := os.ReadFile(jsonPath)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(data, &samples); err != nil {
				t.Fatal(err)
			}
			if len(samples) < 2 {
				t.Fatalf("%d samples in 900ms at one per 300ms, want about 3", len(samples))
			}
			for i, s := range samples {
				// A Go server has a few MiB resident and more goroutines than the
				// streams it serves while they are open.
				if s.RSSBytes < 1<<20 || s.Goroutines < 4 || s.HeapBytes <= 0 || s.P99us <= 0 || s.Errors != 0 {
					t.Errorf("sample %d: %+v", i, s)
				}
				if i > 0 && s.At <= samples[i-1].At {
					t.Errorf("sample %d at %vs, not after %vs", i, s.At, samples[i-1].At)
				}
			}
			if !strings.Contains(stdout.String(), "RSS ") || !strings.Contains(stdout.String(), plotPath) {
				t.Errorf("summary lacks RSS or the plot's path:\n%s", stdout.String())
			}
		})
	}
}

func TestSoakFlagsAreChecked(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "is required"},
		{[]string{"--keypool-bin", "x", "--target", "a:1"}, "for a running one"},
		{[]string{"--target", "a:1"}, "needs --target, --server-pid and --admin"},
		{[]string{"--keypool-bin", "x", "--duration", "0s"}, "--duration"},
		{[]string{"--keypool-bin", "x", "--duration", "25h"}, "--duration"},
		{[]string{"--keypool-bin", "x", "--duration", "1s", "--interval", "2s"}, "--interval"},
		{[]string{"--keypool-bin", "x", "--state", "etcd"}, "--state"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := runSoak(context.Background(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one naming %q", err, tt.want)
			}
		})
	}
}
