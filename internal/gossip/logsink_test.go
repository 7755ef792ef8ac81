package gossip

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestLogSinkAfterShutdown: memberlist's goroutines outlive its Shutdown
// and may still log; once the member shuts memberlist down, the sink drops
// those lines instead of writing to a logger that may be gone (a finished
// test's: "Log in goroutine after Test... has completed" panicked
// TestCrossCheckBlamesTheNode once in 11 runs).
func TestLogSinkAfterShutdown(t *testing.T) {
	var buf bytes.Buffer
	m := &Member{log: slog.New(slog.NewTextHandler(&buf, nil))}
	sink := logSink{m}
	if _, err := sink.Write([]byte("[WARN] memberlist: before\n")); err != nil {
		t.Fatal(err)
	}
	m.shutDown.Store(true)
	if n, err := sink.Write([]byte("[ERR] memberlist: after\n")); err != nil || n == 0 {
		t.Fatalf("write after shutdown: %d, %v; want it taken and dropped", n, err)
	}
	if out := buf.String(); !strings.Contains(out, "before") || strings.Contains(out, "after") {
		t.Fatalf("logged %q: want the line before shutdown only", out)
	}
}
