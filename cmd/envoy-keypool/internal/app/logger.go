package app

import (
	"io"

	"cdr.dev/slog/v3"
	"cdr.dev/slog/v3/sloggers/sloghuman"
	"cdr.dev/slog/v3/sloggers/slogjson"

	"github.com/envoy-keypool/envoy-keypool/config"
)

// newLogger returns the process logger the configuration asks for, writing to w.
func newLogger(w io.Writer, c config.Log) slog.Logger {
	sink := slogjson.Sink(w)
	if c.Format == "human" {
		sink = sloghuman.Sink(w)
	}
	return slog.Make(sink).Leveled(logLevel(c))
}

// logLevel is the level the configuration asks for.
func logLevel(c config.Log) slog.Level {
	return map[string]slog.Level{
		"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
	}[c.Level]
}
