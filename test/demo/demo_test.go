package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestShortenLogLine(t *testing.T) {
	ts := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	hhmmss := ts.Local().Format("15:04:05")
	for _, tc := range []struct{ in, want string }{
		{
			in:   `time=2026-01-02T15:04:05.123Z level=INFO msg="restart decision" container=crashloop namespace=vigil-demo decision=backoff delay=2s`,
			want: hhmmss + " restart decision container=crashloop decision=backoff delay=2s",
		},
		{
			in:   `time=2026-01-02T15:04:05Z level=INFO msg="container exited" container=web namespace=vigil-demo code=0 reason=completed signal=""`,
			want: hhmmss + " container exited container=web code=0 reason=completed",
		},
		{in: `not a log line`, want: "not a log line"},
		{in: `level=WARN msg="x`, want: `level=WARN msg="x`},
	} {
		if got := shortenLogLine(tc.in); got != tc.want {
			t.Errorf("shortenLogLine(%q)\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

// TestLogFollower reads only what was appended since the last call, only
// whole lines, and only the decisions the demo narrates.
func TestLogFollower(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.log")
	f := &logFollower{path: path}
	if got := f.next(); len(got) != 1 || !strings.HasPrefix(got[0], "(") {
		t.Errorf("missing log: %q", got)
	}
	write := func(s string) {
		fh, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		if _, err := fh.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	write("level=INFO msg=\"vigil agent starting\"\nlevel=INFO msg=\"health changed\" container=web\nlevel=INFO msg=\"container restarted\" cont")
	if got := f.next(); len(got) != 1 || got[0] != "health changed container=web" {
		t.Errorf("first read: %q", got)
	}
	write("ainer=crashloop\n")
	if got := f.next(); len(got) != 1 || got[0] != "container restarted container=crashloop" {
		t.Errorf("second read: %q", got)
	}
	if got := f.next(); len(got) != 1 || got[0] != "(nothing new)" {
		t.Errorf("third read: %q", got)
	}
}
