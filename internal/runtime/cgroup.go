package runtime

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// cgroupVersion is the layout found under the cgroup root.
type cgroupVersion int

const (
	cgroupV1 cgroupVersion = 1 // one hierarchy per controller (cgroup2 may sit at unified/, without controllers)
	cgroupV2 cgroupVersion = 2 // the unified hierarchy at the root
)

// cgroupLayout says where each controller's hierarchy is. For v2 every
// field is the root itself.
type cgroupLayout struct {
	version cgroupVersion
	cpuacct string // v1 cpuacct (cpuacct.usage, cpuacct.stat)
	cpu     string // v1 cpu (cpu.stat: CFS throttling)
	memory  string
	pids    string
	blkio   string
	unified string // v2 root
}

// detectCgroupLayout looks at the filesystem under root: a cgroup.controllers
// file at the root means the v2 unified hierarchy; otherwise each v1
// controller's directory is found under its own name or the combined
// "cpu,cpuacct" one. A v1 controller that is not mounted leaves its field
// empty and its figures zero.
func detectCgroupLayout(root string) (cgroupLayout, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return cgroupLayout{}, fmt.Errorf("cgroup root %q: %w", root, errors.Join(errdefs.ErrInvalid, err))
	}
	if !fi.IsDir() {
		return cgroupLayout{}, fmt.Errorf("cgroup root %q is not a directory: %w", root, errdefs.ErrInvalid)
	}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return cgroupLayout{version: cgroupV2, unified: root}, nil
	}
	find := func(names ...string) string {
		for _, n := range names {
			p := filepath.Join(root, n)
			if fi, err := os.Stat(p); err == nil && fi.IsDir() {
				return p
			}
		}
		return ""
	}
	l := cgroupLayout{
		version: cgroupV1,
		cpuacct: find("cpuacct", "cpu,cpuacct", "cpuacct,cpu"),
		cpu:     find("cpu", "cpu,cpuacct", "cpuacct,cpu"),
		memory:  find("memory"),
		pids:    find("pids"),
		blkio:   find("blkio"),
	}
	if l.cpuacct == "" && l.memory == "" && l.cpu == "" && l.pids == "" && l.blkio == "" {
		return cgroupLayout{}, fmt.Errorf("no cgroup v1 controller or v2 unified hierarchy under %q: %w", root, errdefs.ErrInvalid)
	}
	return l, nil
}

// resolveCgroupsPath turns an OCI spec's linux.cgroupsPath into a path
// relative to a hierarchy's root, "/a/b/c". It accepts the cgroupfs form
// ("/ns/id", or relative "ns/id") and the systemd driver's
// "slice:prefix:name" form, which becomes
// "/<expanded slice>/<prefix>-<name>.scope" (a name ending in ".slice" names
// the slice itself). An empty path, or one that would climb out of the root,
// is an error.
func resolveCgroupsPath(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("empty cgroupsPath: %w", errdefs.ErrInvalid)
	}
	if parts := strings.Split(p, ":"); len(parts) == 3 && !strings.HasPrefix(p, "/") {
		return resolveSystemdPath(parts[0], parts[1], parts[2])
	}
	if strings.Contains(p, ":") && !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("cgroupsPath %q: neither a cgroupfs path nor slice:prefix:name: %w", p, errdefs.ErrInvalid)
	}
	return cleanCgroupPath(p)
}

func cleanCgroupPath(p string) (string, error) {
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return "", fmt.Errorf("cgroupsPath %q climbs out of the cgroup root: %w", p, errdefs.ErrInvalid)
		}
	}
	c := path.Clean("/" + p)
	if c == "/" {
		return "", fmt.Errorf("cgroupsPath %q names the root cgroup: %w", p, errdefs.ErrInvalid)
	}
	return c, nil
}

// resolveSystemdPath implements the systemd cgroup driver's naming: slice
// "a-b-c.slice" lives at "/a.slice/a-b.slice/a-b-c.slice"; the unit is
// "<prefix>-<name>.scope" ("<name>" alone when prefix is empty, as is a
// name that already ends in ".slice"); an empty slice means system.slice.
func resolveSystemdPath(slice, prefix, name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("systemd cgroupsPath %q: empty unit name: %w", slice+":"+prefix+":"+name, errdefs.ErrInvalid)
	}
	if slice == "" {
		slice = "system.slice"
	}
	dir, err := expandSlice(slice)
	if err != nil {
		return "", err
	}
	unit := name
	switch {
	case strings.HasSuffix(name, ".slice"):
		u, err := expandSlice(name)
		if err != nil {
			return "", err
		}
		return cleanCgroupPath(u)
	case prefix != "":
		unit = prefix + "-" + name + ".scope"
	default:
		if !strings.Contains(name, ".") {
			unit = name + ".scope"
		}
	}
	if strings.Contains(unit, "/") {
		return "", fmt.Errorf("systemd unit %q contains a slash: %w", unit, errdefs.ErrInvalid)
	}
	return cleanCgroupPath(dir + "/" + unit)
}

// expandSlice turns "a-b-c.slice" into "/a.slice/a-b.slice/a-b-c.slice"
// ("-.slice", the root slice, is "/").
func expandSlice(slice string) (string, error) {
	bad := func() error {
		return fmt.Errorf("systemd slice %q is malformed: %w", slice, errdefs.ErrInvalid)
	}
	if !strings.HasSuffix(slice, ".slice") || strings.Contains(slice, "/") {
		return "", bad()
	}
	if slice == "-.slice" {
		return "/", nil
	}
	base := strings.TrimSuffix(slice, ".slice")
	if base == "" || strings.HasPrefix(base, "-") || strings.HasSuffix(base, "-") || strings.Contains(base, "--") {
		return "", bad()
	}
	var b strings.Builder
	acc := ""
	for _, part := range strings.Split(base, "-") {
		if acc != "" {
			acc += "-"
		}
		acc += part
		b.WriteString("/")
		b.WriteString(acc)
		b.WriteString(".slice")
	}
	return b.String(), nil
}

// cgroupLayout is the layout under the configured cgroup root, detected
// at its first successful reading and kept (the collector and the exit
// path's OOM check share it); a failed detection is tried again next time.
func (r *Runtime) cgroupLayout() (cgroupLayout, error) {
	if l := r.layout.Load(); l != nil {
		return *l, nil
	}
	l, err := detectCgroupLayout(r.cfg.CgroupRoot)
	if err != nil {
		return cgroupLayout{}, err
	}
	r.layout.Store(&l)
	return l, nil
}
