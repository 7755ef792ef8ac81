package agent

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vigilhq/vigil/internal/testenv"
)

// TestResourceSeriesOfALimitedContainer: a spinning container with a
// memory limit (its OCI spec) and a 0.2-CPU quota and 512 shares (written
// into its cgroup, as an update would; testenv's spec sets only the memory
// limit) shows, in the agent's local /metrics read through the exposition
// parser, its quota and period in seconds, its shares, its limit, its
// page cache, failcnt, and throttled CFS periods.
func TestResourceSeriesOfALimitedContainer(t *testing.T) {
	h := newHarness(t)
	addr := freeAddr(t)
	h.start(func(c *Config) { c.MetricsListen = addr })
	const limit = 64 << 20
	h.env.RunContainer(t, testenv.ContainerSpec{Namespace: h.ns, ID: "capped", Image: h.env.WorkloadImage(t, h.ns), Args: []string{"spin"}, MemoryLimit: limit})

	rel := filepath.Join("/", h.env.CgroupParent, h.ns, "capped")
	write := func(path, v string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wantShares := 512.0
	if _, err := os.Stat(filepath.Join(h.env.CgroupRoot, "cgroup.controllers")); err == nil { // v2
		dir := filepath.Join(h.env.CgroupRoot, rel)
		write(filepath.Join(dir, "cpu.max"), "20000 100000")
		write(filepath.Join(dir, "cpu.weight"), "20") // 500 shares as cAdvisor converts
		wantShares = 500
	} else {
		dir := filepath.Join(h.env.CgroupRoot, "cpu", rel)
		write(filepath.Join(dir, "cpu.cfs_period_us"), "100000")
		write(filepath.Join(dir, "cpu.cfs_quota_us"), "20000")
		write(filepath.Join(dir, "cpu.shares"), "512")
	}

	// value returns the capped container's sample of family name, or -1.
	var last string
	value := func(name string) float64 {
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
		for _, m := range mfs[name].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "container" && l.GetValue() == "capped" {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
		return -1
	}
	deadline := time.Now().Add(30 * time.Second)
	for value("vigil_container_cpu_cfs_throttled_periods_total") <= 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no throttled CFS periods for a spinning container under a 0.2 CPU quota in 30 s:\n%s", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, tc := range []struct {
		name string
		want float64
	}{
		{"vigil_container_spec_cpu_quota_seconds", 0.02},
		{"vigil_container_spec_cpu_period_seconds", 0.1},
		{"vigil_container_spec_cpu_shares", wantShares},
		{"vigil_container_memory_limit_bytes", limit},
		{"vigil_container_memory_failcnt_total", 0},
	} {
		if got := value(tc.name); got != tc.want {
			t.Errorf("%s of capped = %v, want %v", tc.name, got, tc.want)
		}
	}
	if p, tp := value("vigil_container_cpu_cfs_periods_total"), value("vigil_container_cpu_cfs_throttled_periods_total"); p < tp {
		t.Errorf("CFS periods %v fewer than throttled periods %v", p, tp)
	}
	if v := value("vigil_container_memory_cache_bytes"); v < 0 {
		t.Errorf("no vigil_container_memory_cache_bytes for capped:\n%s", last)
	}
	if v := value("vigil_container_spec_memory_reservation_limit_bytes"); v != -1 {
		t.Errorf("a reservation series (%v) for a container without one", v)
	}
}
