package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/container"
)

// Defaults of the log files Restart makes under LogDir.
const (
	DefaultLogMaxBytes       = 10 << 20
	DefaultLogRotateInterval = 10 * time.Second
)

// rotatedSuffix names the one older generation kept of a log file.
const rotatedSuffix = ".1"

// logPath is the file under LogDir that Restart gives container k's task
// when the old task's output cannot be reused.
func (r *Runtime) logPath(k container.Key) string {
	return filepath.Join(r.cfg.LogDir, k.Namespace, k.ID+".log")
}

// runLogRotation keeps the log files under LogDir within bounds until ctx
// ends: every LogRotateInterval, a file over LogMaxBytes is rotated, and
// the files of containers that no longer exist are removed. Run owns it.
// Nothing to do without a LogDir.
func (r *Runtime) runLogRotation(ctx context.Context) {
	if r.cfg.LogDir == "" {
		return
	}
	t := time.NewTicker(r.cfg.LogRotateInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.rotateLogs()
	}
}

// rotateLogs makes one pass over LogDir: rotates what is over the cap and,
// while the inventory is in sync with containerd, removes the files of
// containers it does not hold (deleted while the agent was not watching).
// It returns how many files it rotated.
func (r *Runtime) rotateLogs() int {
	files, err := filepath.Glob(filepath.Join(r.cfg.LogDir, "*", "*.log"))
	if err != nil {
		return 0
	}
	rotated := 0
	for _, p := range files {
		k := container.Key{Namespace: filepath.Base(filepath.Dir(p)), ID: strings.TrimSuffix(filepath.Base(p), ".log")}
		if r.Available() && r.watches(k.Namespace) {
			r.mu.RLock()
			_, known := r.inv[k]
			r.mu.RUnlock()
			if !known && r.Available() {
				r.removeLogs(k)
				continue
			}
		}
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() <= r.cfg.LogMaxBytes {
			continue
		}
		r.logMu.Lock() // not while removeLogs removes the container's files
		err = rotateLog(p)
		r.logMu.Unlock()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed with its container meanwhile
			}
			r.log.Warn("container log rotation failed", "path", p, "err", err)
			continue
		}
		r.metrics.logRotations.Add(1)
		rotated++
	}
	return rotated
}

// rotateLog moves the content of the log file at p to p.1 (replacing the
// older generation) and truncates p to zero length, in place: the shim
// holds p open for appending (O_APPEND), so its next write lands at the new
// end, and no descriptor needs to change. What the task writes between the
// copy and the truncation is lost (a copy of a file at the cap takes
// milliseconds); that is the price of not making the shim reopen its file,
// as logrotate's copytruncate pays it.
func rotateLog(p string) error {
	src, err := os.Open(p)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp := p + rotatedSuffix + ".tmp"
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p+rotatedSuffix)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("copy to %s: %w", p+rotatedSuffix, err)
	}
	return os.Truncate(p, 0)
}

// removeLogs removes container k's log files under LogDir (the current
// one and the rotated generation); missing files are fine.
func (r *Runtime) removeLogs(k container.Key) {
	if r.cfg.LogDir == "" || k.Namespace == "" || k.ID == "" || strings.ContainsAny(k.Namespace+k.ID, "/\x00") {
		return
	}
	p := r.logPath(k)
	r.logMu.Lock() // a rotation in progress would make p.1 again
	defer r.logMu.Unlock()
	for _, f := range []string{p, p + rotatedSuffix, p + rotatedSuffix + ".tmp"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.log.Warn("removing a deleted container's log", "path", f, "err", err)
		}
	}
}

// watches reports whether namespace ns is one the runtime watches.
func (r *Runtime) watches(ns string) bool {
	if len(r.cfg.Namespaces) == 0 {
		return true
	}
	for _, n := range r.cfg.Namespaces {
		if n == ns {
			return true
		}
	}
	return false
}
