package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

// FuzzParseFlags feeds command lines (NUL-separated arguments) to the flag
// parser: it never panics, and what it accepts names only known binaries,
// a plain tag and, when given, a valid creation time.
func FuzzParseFlags(f *testing.F) {
	for _, s := range []string{
		"",
		"-only\x00vigil-agent,vigilctl",
		"-tag\x00v1.2.3\x00-repo\x00registry.example/x",
		"-created\x002025-01-02T03:04:05Z",
		"-only\x00,,vigil-aggregator,",
		"-tag\x00a:b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		var args []string
		if line != "" {
			args = strings.Split(line, "\x00")
		}
		cfg, err := parseFlags(args, io.Discard)
		if err != nil {
			return
		}
		for _, b := range cfg.only {
			if !isBinary(b) {
				t.Fatalf("accepted binary %q", b)
			}
		}
		if cfg.tag == "" || strings.ContainsAny(cfg.tag, ":/@ ") {
			t.Fatalf("accepted tag %q", cfg.tag)
		}
		if !cfg.created.IsZero() && cfg.created.Format(time.RFC3339) == "" {
			t.Fatalf("accepted creation time %v", cfg.created)
		}
	})
}
