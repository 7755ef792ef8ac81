package agent

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vigilhq/vigil/internal/testenv"
)

// TestWritableLayerUsageInSamples (issue 24): a container that writes 1 MiB
// into its root filesystem shows at least that in its resource samples,
// read by the agent's fs-usage goroutine from the container's overlay upper
// directory, and in vigil_container_fs_usage_bytes on the agent's /metrics;
// a container that wrote nothing shows less.
func TestWritableLayerUsageInSamples(t *testing.T) {
	h := newHarness(t)
	addr := freeAddr(t)
	h.start(func(c *Config) {
		c.MetricsListen = addr
		c.FSUsageInterval = time.Second
	})
	img := h.env.BusyboxImage(t, h.ns)
	h.env.RunContainer(t, testenv.ContainerSpec{Namespace: h.ns, ID: "writer", Image: img, Args: []string{"sh", "-c",
		"dd if=/dev/urandom of=/f bs=4096 count=256 && sleep 1000000"}})
	h.env.RunContainer(t, testenv.ContainerSpec{Namespace: h.ns, ID: "idle", Image: img, Args: []string{"sleep", "1000000"}})

	const written = 1 << 20
	var last string
	usage := func(id string) float64 {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		last = string(b)
		p := expfmt.NewTextParser(model.LegacyValidation)
		mfs, err := p.TextToMetricFamilies(strings.NewReader(last))
		if err != nil {
			t.Fatalf("agent /metrics does not parse: %v", err)
		}
		for _, m := range mfs["vigil_container_fs_usage_bytes"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "container" && l.GetValue() == id {
					return m.GetGauge().GetValue()
				}
			}
		}
		return -1
	}
	deadline := time.Now().Add(60 * time.Second)
	for usage("writer") < written {
		if time.Now().After(deadline) {
			t.Fatalf("no vigil_container_fs_usage_bytes of at least %d for a container that wrote 1 MiB in 60 s:\n%s", written, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The sample the uplink gets carries it too.
	a := h.agent
	a.mu.RLock()
	var sampled uint64
	for k, s := range a.lastStats {
		if k.ID == "writer" {
			sampled = s.GetFsUsageBytes()
		}
	}
	a.mu.RUnlock()
	if sampled < written {
		t.Errorf("the writer's last resource sample has fs_usage_bytes %d, want at least %d", sampled, written)
	}
	for usage("idle") < 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no vigil_container_fs_usage_bytes for the idle container in 60 s:\n%s", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if idle := usage("idle"); idle >= written {
		t.Errorf("the idle container's writable layer is %v B, a container that wrote nothing", idle)
	}
}
