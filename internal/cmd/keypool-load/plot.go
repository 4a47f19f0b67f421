package main

import (
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// soakSample is what the soak read at the end of one interval.
type soakSample struct {
	At             float64 `json:"at_seconds"` // since the soak started
	RSSBytes       int64   `json:"rss_bytes"`
	Goroutines     float64 `json:"goroutines"`
	HeapBytes      float64 `json:"heap_inuse_bytes"`
	P99us          float64 `json:"message_p99_us"`
	AttemptsPerSec float64 `json:"attempts_per_second"`
	Errors         int64   `json:"errors"`
}

// writeSoakPlot draws RSS, goroutines and message p99 over time, one panel each,
// as a PNG or an SVG as path's extension says.
func writeSoakPlot(path, title string, samples []soakSample) error {
	type panel struct {
		label string
		y     func(soakSample) float64
	}
	panels := []panel{
		{"RSS (MiB)", func(s soakSample) float64 { return float64(s.RSSBytes) / (1 << 20) }},
		{"goroutines", func(s soakSample) float64 { return s.Goroutines }},
		{"message p99 (ms)", func(s soakSample) float64 { return s.P99us / 1e3 }},
	}
	plots := make([][]*plot.Plot, len(panels))
	for i, pn := range panels {
		p := plot.New()
		if i == 0 {
			p.Title.Text = title
		}
		p.X.Label.Text = "time (s)"
		p.Y.Label.Text = pn.label
		p.Y.Min = 0
		p.Add(plotter.NewGrid())
		xys := make(plotter.XYs, len(samples))
		for j, s := range samples {
			xys[j] = plotter.XY{X: s.At, Y: pn.y(s)}
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("plot %s: %w", pn.label, err)
		}
		line.Color = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
		line.Width = vg.Points(1.5)
		p.Add(line)
		plots[i] = []*plot.Plot{p}
	}
	w, h := 8*vg.Inch, 9*vg.Inch
	var c interface {
		vg.CanvasSizer
		io.WriterTo
	}
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".png":
		c = vgimg.PngCanvas{Canvas: vgimg.New(w, h)}
	case ".svg":
		c = vgsvg.New(w, h)
	default:
		return fmt.Errorf("--plot %s: want a .png or .svg file", path)
	}
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6),
		PadLeft: vg.Points(6), PadRight: vg.Points(12), PadY: vg.Points(12)}
	canvases := plot.Align(plots, tiles, draw.New(c))
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
