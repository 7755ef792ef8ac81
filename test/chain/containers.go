package chain

import (
	"context"
	"os"
	"path/filepath"
	"sort"
)

// Container is a plain containerd container, run the way a user runs one:
// with ctr.
type Container struct {
	ID        string
	Namespace string // containerd namespace; "" means "default"
	Image     string
	Args      []string // the process's command line: with ctr, it replaces the image's Entrypoint and Cmd
	Labels    map[string]string
	// NetNSPath is a network namespace to join ("" = a private one per task).
	NetNSPath string
	// LogPath receives the task's stdout and stderr ("" = /dev/null).
	LogPath string
	// CgroupParent holds the container's cgroup: CgroupParent/ID.
	CgroupParent string
}

// CtrArgs is the ctr command line that creates and starts c in the
// background on the containerd at address.
func (c Container) CtrArgs(address string) []string {
	ns := c.Namespace
	if ns == "" {
		ns = "default"
	}
	args := []string{"-a", address, "-n", ns, "run", "-d"}
	keys := make([]string, 0, len(c.Labels))
	for k := range c.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--label", k+"="+c.Labels[k])
	}
	if c.NetNSPath != "" {
		args = append(args, "--with-ns", "network:"+c.NetNSPath)
	}
	if c.LogPath != "" {
		args = append(args, "--log-uri", "file://"+c.LogPath)
	} else {
		args = append(args, "--null-io")
	}
	if c.CgroupParent != "" {
		args = append(args, "--cgroup", filepath.Join(c.CgroupParent, c.ID))
	}
	args = append(args, c.Image, c.ID)
	return append(args, c.Args...)
}

// RunContainer creates and starts c with `ctr run -d` (/usr/bin/ctr ships
// with containerd); ctr is killed when ctx ends.
func RunContainer(ctx context.Context, address string, c Container) error {
	if c.LogPath != "" {
		if err := os.MkdirAll(filepath.Dir(c.LogPath), 0o755); err != nil {
			return err
		}
	}
	return runCmd(ctx, "ctr", c.CtrArgs(address)...)
}
