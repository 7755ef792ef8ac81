package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/runtime"
)

// TestHealthzFailsWhenLoopStalls: /healthz answers 200 while the decision
// loop turns and 503 once it has not turned for three sampling intervals
// (at least 30 s).
func TestHealthzFailsWhenLoopStalls(t *testing.T) {
	rt, err := runtime.New(runtime.Config{Address: "/nonexistent.sock"})
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{SampleInterval: 10 * time.Second}, rt: rt}
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		a.serveHealthz(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get(); code != http.StatusServiceUnavailable {
		t.Errorf("before the loop ever turned: %d %q, want 503", code, body)
	}
	a.heartbeat.Store(time.Now().UnixNano())
	if code, body := get(); code != http.StatusOK || !strings.HasPrefix(body, "ok") {
		t.Errorf("loop turning: %d %q, want 200 ok", code, body)
	}
	a.heartbeat.Store(time.Now().Add(-31 * time.Second).UnixNano())
	if code, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(body, "has not turned") {
		t.Errorf("loop stalled 31s: %d %q, want 503 saying so", code, body)
	}
}
