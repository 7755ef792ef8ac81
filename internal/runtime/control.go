package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// cleanupTimeout bounds the clean-up calls made after the caller's context
// has ended (killing and deleting a timed-out exec process).
const cleanupTimeout = 5 * time.Second

// connected returns the current client, or ErrUnavailable.
func (r *Runtime) connected() (*client.Client, error) {
	c := r.client.Load()
	if c == nil {
		return nil, fmt.Errorf("containerd at %s not connected: %w", r.cfg.Address, errdefs.ErrUnavailable)
	}
	return c, nil
}

// loadTask loads container k and its task (attached to no IO).
func (r *Runtime) loadTask(ctx context.Context, c *client.Client, k Key) (client.Container, client.Task, error) {
	var cont client.Container
	var task client.Task
	err := r.call(ctx, "task_load", func(ctx context.Context) error {
		var err error
		cont, err = c.LoadContainer(ctx, k.ID)
		if err != nil {
			return err
		}
		task, err = cont.Task(ctx, nil)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("container %s/%s: %w", k.Namespace, k.ID, err)
	}
	return cont, task, nil
}

// Kill sends sig to the task's init process. A container without a task is
// ErrNotFound.
func (r *Runtime) Kill(ctx context.Context, k Key, sig syscall.Signal) error {
	c, err := r.connected()
	if err != nil {
		return err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	_, task, err := r.loadTask(ctx, c, k)
	if err != nil {
		return err
	}
	return r.call(ctx, "task_kill", func(ctx context.Context) error { return task.Kill(ctx, sig) })
}

// Stop sends SIGTERM, waits up to grace for the task to exit, then sends
// SIGKILL and waits until it exits or ctx ends. A paused task is resumed
// first (a frozen process cannot handle SIGTERM). Stopping a task that has
// already exited is a no-op; the task is not deleted.
func (r *Runtime) Stop(ctx context.Context, k Key, grace time.Duration) error {
	c, err := r.connected()
	if err != nil {
		return err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	_, task, err := r.loadTask(ctx, c, k)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var exitC <-chan client.ExitStatus
	if err := r.call(ctx, "task_wait", func(context.Context) error {
		var err error
		exitC, err = task.Wait(wctx) // the wait outlives the call's deadline
		return err
	}); err != nil {
		return err
	}
	var st client.Status
	if err := r.call(ctx, "task_status", func(ctx context.Context) error {
		var err error
		st, err = task.Status(ctx)
		return err
	}); err != nil {
		return err
	}
	switch st.Status {
	case client.Stopped:
		return nil
	case client.Paused, client.Pausing:
		if err := r.call(ctx, "task_resume", task.Resume); err != nil {
			return err
		}
	}
	if err := r.call(ctx, "task_kill", func(ctx context.Context) error { return task.Kill(ctx, syscall.SIGTERM) }); err != nil {
		return err
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-exitC:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s/%s: %w: %w", k.Namespace, k.ID, errdefs.ErrUnavailable, ctx.Err())
	case <-t.C:
	}
	if err := r.call(ctx, "task_kill", func(ctx context.Context) error { return task.Kill(ctx, syscall.SIGKILL) }); err != nil {
		return err
	}
	select {
	case <-exitC:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s/%s: no exit after SIGKILL: %w: %w", k.Namespace, k.ID, errdefs.ErrUnavailable, ctx.Err())
	}
}

// Restart replaces an exited task: it deletes the old task, creates a new
// one from the same container (spec, labels and snapshot unchanged) and
// starts it. The new task's stdout and stderr go where the old task's did
// when that was a file:// or binary:// URI; otherwise to
// LogDir/<namespace>/<id>.log (discarded when LogDir is empty). A running
// or paused task is ErrConflict: stop it first.
//
// With RequireTask, the exited task must still be there for Restart to
// replace it: a task that someone else deleted (an operator's stop, as
// nerdctl stop and ctr task rm do) fails with ErrTaskGone, and no new task
// is made. Restart policies use it, so that they never undo an operator's
// stop; an operator's own restart does not.
func (r *Runtime) Restart(ctx context.Context, k Key, opts ...RestartOption) error {
	var o restartOptions
	for _, opt := range opts {
		opt(&o)
	}
	c, err := r.connected()
	if err != nil {
		return err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	var cont client.Container
	if err := r.call(ctx, "container_load", func(ctx context.Context) error {
		var err error
		cont, err = c.LoadContainer(ctx, k.ID)
		return err
	}); err != nil {
		return fmt.Errorf("restart %s/%s: %w", k.Namespace, k.ID, err)
	}
	var old *tasktypes.Process
	err = r.call(ctx, "task_get", func(ctx context.Context) error {
		resp, err := c.TaskService().Get(ctx, &tasks.GetRequest{ContainerID: k.ID})
		if err == nil {
			old = resp.Process
		}
		return err
	})
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("restart %s/%s: %w", k.Namespace, k.ID, err)
	}
	if old == nil && o.requireTask {
		return fmt.Errorf("restart %s/%s: %w", k.Namespace, k.ID, ErrTaskGone)
	}
	creator, err := r.restartIO(k, old)
	if err != nil {
		return err
	}
	if old != nil {
		switch old.Status {
		case tasktypes.Status_STOPPED, tasktypes.Status_CREATED, tasktypes.Status_UNKNOWN:
		default:
			return fmt.Errorf("restart %s/%s: task is %s, not exited: %w", k.Namespace, k.ID, strings.ToLower(old.Status.String()), errdefs.ErrConflict)
		}
		err := r.call(ctx, "task_delete", func(ctx context.Context) error {
			t, err := cont.Task(ctx, nil)
			if err != nil {
				return err
			}
			_, err = t.Delete(ctx)
			return err
		})
		if errors.Is(err, errdefs.ErrNotFound) && o.requireTask {
			// Deleted under our feet: someone else's delete won.
			return fmt.Errorf("restart %s/%s: %w", k.Namespace, k.ID, ErrTaskGone)
		}
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("restart %s/%s: delete old task: %w", k.Namespace, k.ID, err)
		}
	}
	var task client.Task
	if err := r.call(ctx, "task_create", func(ctx context.Context) error {
		var err error
		task, err = cont.NewTask(ctx, creator)
		return err
	}); err != nil {
		return fmt.Errorf("restart %s/%s: create task: %w", k.Namespace, k.ID, err)
	}
	if err := r.call(ctx, "task_start", task.Start); err != nil {
		_ = r.call(context.WithoutCancel(ctx), "task_delete", func(ctx context.Context) error {
			_, err := task.Delete(ctx, client.WithProcessKill)
			return err
		})
		return fmt.Errorf("restart %s/%s: start task: %w", k.Namespace, k.ID, err)
	}
	return nil
}

// restartIO chooses the new task's IO: the old task's file:// or binary://
// URI when it had one, else a log file under LogDir, else nothing.
func (r *Runtime) restartIO(k Key, old *tasktypes.Process) (cio.Creator, error) {
	if old != nil && old.Stdout != "" && !old.Terminal {
		if u, err := url.Parse(old.Stdout); err == nil && (u.Scheme == "file" || u.Scheme == "binary") {
			return cio.LogURI(u), nil
		}
	}
	if r.cfg.LogDir == "" {
		return cio.NullIO, nil
	}
	dir := filepath.Join(r.cfg.LogDir, k.Namespace)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("restart %s/%s: log dir: %w: %v", k.Namespace, k.ID, errdefs.ErrPermission, err)
	}
	return cio.LogFile(filepath.Join(dir, k.ID+".log")), nil
}

// Exec runs args in k's running task, with the container's process spec
// (user, env, cwd) and no terminal, and returns its exit code and its
// stdout and stderr interleaved, of which the first outputCap bytes are
// kept (0: 64 KiB). When ctx ends first the process is killed and the error
// wraps ctx.Err() (context.DeadlineExceeded for a timeout).
func (r *Runtime) Exec(ctx context.Context, k Key, args []string, outputCap int) (ExecResult, error) {
	if len(args) == 0 {
		return ExecResult{}, fmt.Errorf("exec in %s/%s: no command: %w", k.Namespace, k.ID, errdefs.ErrInvalid)
	}
	if outputCap <= 0 {
		outputCap = defaultExecOutputCap
	}
	c, err := r.connected()
	if err != nil {
		return ExecResult{}, err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	cont, task, err := r.loadTask(ctx, c, k)
	if err != nil {
		return ExecResult{}, err
	}
	var pspec *specs.Process
	if err := r.call(ctx, "container_spec", func(ctx context.Context) error {
		spec, err := cont.Spec(ctx)
		if err != nil {
			return err
		}
		if spec.Process == nil {
			return fmt.Errorf("container spec has no process: %w", errdefs.ErrInvalid)
		}
		p := *spec.Process
		pspec = &p
		return nil
	}); err != nil {
		return ExecResult{}, err
	}
	pspec.Args = args
	pspec.Terminal = false
	pspec.ConsoleSize = nil

	out := &cappedBuffer{limit: outputCap}
	id := execID()
	// The process outlives the caller's deadline until it is killed and
	// deleted: those calls use a context detached from ctx.
	bg := context.WithoutCancel(ctx)
	var proc client.Process
	if err := r.call(ctx, "exec_create", func(ctx context.Context) error {
		var err error
		proc, err = task.Exec(ctx, id, pspec, cio.NewCreator(cio.WithStreams(nil, out, out)))
		return err
	}); err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s/%s: %w", k.Namespace, k.ID, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(bg, cleanupTimeout)
		defer cancel()
		if _, err := proc.Delete(dctx, client.WithProcessKill); err != nil && !errors.Is(translateErr(err), errdefs.ErrNotFound) {
			r.log.Debug("exec delete failed", "namespace", k.Namespace, "id", k.ID, "exec", id, "err", err)
		}
	}()
	wctx, cancelWait := context.WithCancel(bg)
	defer cancelWait()
	var exitC <-chan client.ExitStatus
	if err := r.call(ctx, "exec_wait", func(context.Context) error {
		var err error
		exitC, err = proc.Wait(wctx)
		return err
	}); err != nil {
		return ExecResult{}, err
	}
	if err := r.call(ctx, "exec_start", proc.Start); err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s/%s: %w", k.Namespace, k.ID, err)
	}
	select {
	case st := <-exitC:
		drainExecIO(ctx, proc.IO())
		code, _, err := st.Result()
		if err != nil {
			return ExecResult{}, fmt.Errorf("exec in %s/%s: %w", k.Namespace, k.ID, translateErr(err))
		}
		return ExecResult{ExitCode: int(code), Output: out.Bytes()}, nil
	case <-ctx.Done():
		kctx, cancel := context.WithTimeout(bg, cleanupTimeout)
		defer cancel()
		_ = proc.Kill(kctx, syscall.SIGKILL)
		select {
		case <-exitC:
		case <-kctx.Done():
		}
		proc.IO().Cancel()
		return ExecResult{ExitCode: -1, Output: out.Bytes()}, fmt.Errorf("exec in %s/%s: killed: %w", k.Namespace, k.ID, ctx.Err())
	}
}

// execDrainTimeout bounds how long Exec waits, once the exec process has
// exited, for the rest of its output. A background child that inherited
// stdout or stderr (sh -c "sleep 60 &") keeps the pipes open after the exit,
// and the copy would otherwise wait for that child.
const execDrainTimeout = time.Second

// drainExecIO waits until io's copies end, ctx ends or execDrainTimeout
// passes, whichever is first, then cancels io, which closes the FIFOs so
// that the copies end. The waiting goroutine ends with the copies.
func drainExecIO(ctx context.Context, io cio.IO) {
	done := make(chan struct{})
	go func() {
		io.Wait()
		close(done)
	}()
	t := time.NewTimer(execDrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-t.C:
	}
	io.Cancel()
}

func execID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "vigil-exec-" + hex.EncodeToString(b[:])
}

// cappedBuffer keeps the first limit bytes written to it and discards the
// rest while still accepting writes, so that the process never blocks on a
// full pipe. Safe for concurrent writers (stdout and stderr).
type cappedBuffer struct {
	mu    sync.Mutex
	limit int
	buf   []byte
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// Bytes returns a copy of what was kept.
func (b *cappedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf...)
}

// ErrTaskGone: Restart with RequireTask found no exited task to replace,
// because someone else deleted it. It wraps errdefs.ErrNotFound.
var ErrTaskGone = fmt.Errorf("the exited task was deleted by someone else: %w", errdefs.ErrNotFound)

// RestartOption modifies Restart.
type RestartOption func(*restartOptions)

type restartOptions struct{ requireTask bool }

// RequireTask makes Restart fail with ErrTaskGone, creating nothing, when
// the exited task is no longer there to replace.
func RequireTask() RestartOption { return func(o *restartOptions) { o.requireTask = true } }
