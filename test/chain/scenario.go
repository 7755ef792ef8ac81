package chain

import (
	"path/filepath"
	"strconv"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
)

// The containers of the demo's stories, shared with the end-to-end test so
// that what the demo shows is what CI checks. Each runs the workload image
// (test/workload).

// Story container ids.
const (
	WebID       = "web"       // healthy HTTP server with an HTTP health check
	CrashLoopID = "crashloop" // exits 1 every few seconds under on-failure
	FlakyID     = "flaky"     // turns unhealthy, restarted by restart-on-unhealthy
)

// StoryOptions tune the stories (the demo is slow enough to watch, the test
// fast).
type StoryOptions struct {
	// Namespace is the containerd namespace of the containers. Give each
	// chain its own: runc keeps its state under /run/containerd/runc/NS/ID
	// for every containerd on the host, so two containerds running the same
	// NS/ID collide (runc create fails, and its clean-up kills the other).
	Namespace string
	// NetNSPath is the network namespace the servers share (lo up).
	NetNSPath string
	// LogDir receives each container's stdout and stderr as ID.log.
	LogDir string
	// CgroupParent holds the containers' cgroups.
	CgroupParent string
	// CrashAfter is how long the crash-looper runs before it exits 1.
	CrashAfter time.Duration
	// CrashRestarts bounds the crash-looper's restarts (on-failure:N);
	// 0 means on-failure without a bound.
	CrashRestarts int
	// UnhealthyAfter is how long the flaky server stays healthy.
	UnhealthyAfter time.Duration
	// HealthInterval is the interval of the servers' health checks.
	HealthInterval time.Duration
}

// Stories returns the three story containers.
func Stories(o StoryOptions) []Container {
	policy := "on-failure"
	if o.CrashRestarts > 0 {
		policy += ":" + strconv.Itoa(o.CrashRestarts)
	}
	// The servers get a start period of five intervals, as a server that
	// needs a moment to listen should: a probe that comes before it listens
	// (the first one is due at a random point of the first interval) is then
	// not counted as a failure. Without it the healthy web server sometimes
	// had one failed probe in its counter on a loaded machine (e2e,
	// 2026-11-23); this is the likely cause, as its health only went from
	// starting to healthy, but the logs did not say which probe failed.
	health := func(port string) map[string]string {
		return map[string]string{
			"vigil.io/health-http":         "http://:" + port + "/healthz",
			"vigil.io/health-interval":     o.HealthInterval.String(),
			"vigil.io/health-timeout":      "1s",
			"vigil.io/health-retries":      "3",
			"vigil.io/health-start-period": (5 * o.HealthInterval).String(),
		}
	}
	web := Container{ID: WebID, Args: []string{"/workload", "serve", "--http", ":8080"}, Labels: health("8080"), NetNSPath: o.NetNSPath}
	web.Labels["vigil.io/restart-policy"] = "always"
	flaky := Container{
		ID:        FlakyID,
		Args:      []string{"/workload", "serve", "--http", ":8081", "--unhealthy-after", o.UnhealthyAfter.String()},
		Labels:    health("8081"),
		NetNSPath: o.NetNSPath,
	}
	flaky.Labels["vigil.io/restart-policy"] = "always"
	flaky.Labels["vigil.io/restart-on-unhealthy"] = "true"
	crash := Container{
		ID:     CrashLoopID,
		Args:   []string{"/workload", "exit", "1", "--after", o.CrashAfter.String()},
		Labels: map[string]string{"vigil.io/restart-policy": policy},
	}
	out := []Container{web, crash, flaky}
	for i := range out {
		out[i].Image = WorkloadRef
		out[i].Namespace = o.Namespace
		out[i].CgroupParent = o.CgroupParent
		if o.LogDir != "" {
			out[i].LogPath = filepath.Join(o.LogDir, out[i].ID+".log")
		}
	}
	return out
}

// StoryPod is the demo's CRI pod: a web server made the way the kubelet
// makes one (the kubelet, not Vigil, owns its restarts).
func StoryPod(logDir, cgroupParent string) testenv.PodSpec {
	return testenv.PodSpec{
		Namespace:    "shop",
		Name:         "frontend",
		UID:          "6b0c6d0e-0000-4000-8000-00000000f00d",
		CgroupParent: filepath.Join(cgroupParent, "pod-frontend"),
		LogDir:       filepath.Join(logDir, "pod-frontend"),
		Containers:   []testenv.PodContainer{{Name: "nginx", Image: WorkloadRef, Args: []string{"serve", "--http", ":8080"}}},
	}
}

// SickID is the remediation story's container: it turns unhealthy once
// (its mark survives a restart, on the same root filesystem), and its own
// policy does not restart it (restart-on-unhealthy=false), so only a
// remediation through Alertmanager and the aggregator can.
const SickID = "sick"

// SickNamespacePrefix: the shipped remediation rules
// (deploy/remediation/rules.yaml) act on the namespaces default, prod-*
// and k8s.io; the story's namespace starts with it.
const SickNamespacePrefix = "prod-"

// SickStory returns the remediation story's container in namespace (which
// must start with SickNamespacePrefix), serving on port 8090 in NetNSPath.
func SickStory(o StoryOptions) Container {
	c := Container{
		ID:        SickID,
		Image:     WorkloadRef,
		Namespace: o.Namespace,
		Args:      []string{"/workload", "serve", "--http", ":8090", "--unhealthy-after", o.UnhealthyAfter.String(), "--unhealthy-once", "/was-unhealthy"},
		Labels: map[string]string{
			"vigil.io/health-http":          "http://:8090/healthz",
			"vigil.io/health-interval":      o.HealthInterval.String(),
			"vigil.io/health-timeout":       "1s",
			"vigil.io/health-retries":       "3",
			"vigil.io/health-start-period":  (5 * o.HealthInterval).String(),
			"vigil.io/restart-policy":       "always",
			"vigil.io/restart-on-unhealthy": "false",
		},
		NetNSPath:    o.NetNSPath,
		CgroupParent: o.CgroupParent,
	}
	if o.LogDir != "" {
		c.LogPath = filepath.Join(o.LogDir, c.ID+".log")
	}
	return c
}
