package chain

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a program the chain started, detached from the caller's
// terminal (its own session) with stdout and stderr appended to a log file,
// and recorded in a pid file so that another program can stop it later.
type Process struct {
	Name    string // short name: "aggregator", "agent", "prometheus", "containerd"
	Path    string // the binary
	LogPath string
	PIDFile string
	PID     int

	exited chan struct{} // closed when the process is reaped; nil when not our child
}

// startProcess starts bin with args as Name, records its pid in
// dir/run/NAME.pid and appends its output to dir/logs/NAME.log. A detached
// process outlives the caller (a demo leaves it running for `demo down` to
// stop). Otherwise the kernel kills it when this program dies, so that a
// test that panics on its timeout leaks nothing: the parent-death signal
// fires when the thread that started the child ends, not the process
// (go.dev/issue/27505), so the child is started and waited for by one
// goroutine locked to its thread, which the Go runtime then neither ends nor
// hands to other goroutines (some lock threads into network namespaces and
// let them end) until the child has exited.
func startProcess(dir, name, bin string, args []string, detach bool) (*Process, error) {
	bin, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, err
	}
	p := &Process{
		Name:    name,
		Path:    bin,
		LogPath: filepath.Join(dir, "logs", name+".log"),
		PIDFile: filepath.Join(dir, "run", name+".pid"),
	}
	// A record that cannot be read is stale: it is overwritten.
	if q, ok, err := LoadProcess(dir, name); err == nil && ok && alive(q.PID, bin) {
		return nil, fmt.Errorf("%s is already running (pid %d, recorded in %s)", name, q.PID, p.PIDFile)
	}
	for _, d := range []string{filepath.Dir(p.LogPath), filepath.Dir(p.PIDFile)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s: %s %s\n", time.Now().Format(time.RFC3339), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A session of its own: a ^C in the terminal that ran the demo does not
	// reach it, and it keeps running after the demo program exits.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if !detach {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	p.exited = make(chan struct{})
	started := make(chan error, 1)
	go func() { // owned by the process: ends when it exits
		goruntime.LockOSThread() // for as long as the child lives: see above
		defer goruntime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.PID = cmd.Process.Pid
	if err := recordProcess(dir, name, p.PID, bin); err != nil {
		_ = cmd.Process.Kill()
		return nil, err
	}
	return p, nil
}

// recordProcess writes dir/run/NAME.pid for a process started by this
// program, for LoadProcess in another.
func recordProcess(dir, name string, pid int, bin string) error {
	pidFile := filepath.Join(dir, "run", name+".pid")
	if err := os.MkdirAll(filepath.Dir(pidFile), 0o755); err != nil {
		return err
	}
	return os.WriteFile(pidFile, []byte(fmt.Sprintf("%d\n%s\n", pid, bin)), 0o644)
}

// Running reports whether the process is still alive.
func (p *Process) Running() bool {
	if p.exited != nil {
		select {
		case <-p.exited:
			return false
		default:
			return true
		}
	}
	return alive(p.PID, p.Path)
}

// Signal sends sig to the process, and nothing if it is gone.
func (p *Process) Signal(sig syscall.Signal) error {
	if !p.Running() {
		return nil
	}
	if err := syscall.Kill(p.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %s (pid %d): %w", p.Name, p.PID, err)
	}
	return nil
}

// Kill sends SIGKILL and waits until the process is gone. The pid file
// stays: a crash leaves it too.
func (p *Process) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	return p.wait(10 * time.Second)
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL; it removes the pid
// file. Safe to call twice.
func (p *Process) Stop(grace time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	if p.wait(grace) != nil {
		if err := p.Kill(); err != nil {
			return err
		}
	}
	if err := os.Remove(p.PIDFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (p *Process) wait(timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for p.Running() {
		select {
		case <-p.exited:
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("%s (pid %d) still running after %v", p.Name, p.PID, timeout)
		}
	}
	return nil
}

// LoadProcess reads a process recorded by a pid file in dir/run (by another
// program, e.g. `demo up`). ok is false when there is no record.
func LoadProcess(dir, name string) (p *Process, ok bool, err error) {
	pidFile := filepath.Join(dir, "run", name+".pid")
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	} else if err != nil {
		return nil, false, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || len(lines) < 2 {
		return nil, false, fmt.Errorf("%s: want a pid and the binary's path, have %q", pidFile, b)
	}
	return &Process{Name: name, Path: lines[1], PID: pid, PIDFile: pidFile, LogPath: filepath.Join(dir, "logs", name+".log")}, true, nil
}

// alive reports whether pid exists, is not a zombie and runs bin (so that a
// recycled pid is never mistaken for ours).
func alive(pid int, bin string) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	want, err := filepath.EvalSymlinks(bin)
	if err != nil {
		want = bin
	}
	return exe == want || filepath.Base(exe) == filepath.Base(want)
}
