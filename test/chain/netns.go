package chain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// runCmd runs a setup command (ip, ctr) and returns its output in the error.
// It kills the command when ctx ends.
func runCmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NetNSPath is where `ip netns` keeps the namespace called name.
func NetNSPath(name string) string { return filepath.Join("/var/run/netns", name) }

// CreateNetNS creates the named network namespace with lo up (as `ip netns
// add` does), unless it exists.
func CreateNetNS(ctx context.Context, name string) error {
	if _, err := os.Stat(NetNSPath(name)); err == nil {
		return nil
	}
	if err := runCmd(ctx, "ip", "netns", "add", name); err != nil {
		return err
	}
	return runCmd(ctx, "ip", "-n", name, "link", "set", "lo", "up")
}

// DeleteNetNS removes the named network namespace; a missing one is fine.
func DeleteNetNS(ctx context.Context, name string) error {
	if _, err := os.Stat(NetNSPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return runCmd(ctx, "ip", "netns", "delete", name)
}
