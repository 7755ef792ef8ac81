package runtime

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	apitypes "github.com/containerd/containerd/api/types"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

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
//
// With ResumeInterrupted, Restart finishes a restart that an earlier call
// began and did not end (the agent was killed in the middle of it): the
// container may have no task left, or a new task that was created and never
// started, which is replaced.
//
// Whatever an earlier create of the container's task, interrupted inside
// containerd, left in the way is cleared (see createTask): an earlier
// create still going on is waited for (up to 10 s, then ErrBundleLeft), a
// shim without a task is deleted, and with ResumeInterrupted a created or
// stopped task is replaced. So a Restart that returns nil has made and
// started a task of its own, and the task it replaced (and any leftover it
// cleared, whose events carry Event.Leftover) is gone. A Restart that fails
// deletes a task it created and could not start; only when ctx ends (or
// its caller dies) inside the create can containerd still finish that
// create: Restart is safe to call again then, and with ResumeInterrupted it
// finishes what the earlier call began.
//
// The new task is made as containerd's client makes one: the rootfs is the
// mounts of the container's snapshot, and containerd applies the
// container's runtime (name and options) itself.
func (r *Runtime) Restart(ctx context.Context, k container.Key, opts ...RestartOption) error {
	var o restartOptions
	for _, opt := range opts {
		opt(&o)
	}
	c, err := r.connected()
	if err != nil {
		return err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	cc, err := r.loadContainer(ctx, c, k)
	if err != nil {
		return fmt.Errorf("restart %s: %w", k, err)
	}
	var old *tasktypes.Process
	err = r.call(ctx, "task_get", func(ctx context.Context) error {
		resp, err := c.tasks.Get(ctx, &tasksapi.GetRequest{ContainerID: k.ID})
		if err == nil {
			old = resp.GetProcess()
		}
		return err
	})
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("restart %s: %w", k, err)
	}
	if old == nil && o.requireTask {
		return fmt.Errorf("restart %s: %w", k, ErrTaskGone)
	}
	if old != nil {
		switch {
		case old.Status == tasktypes.Status_STOPPED, old.Status == tasktypes.Status_UNKNOWN:
		case old.Status == tasktypes.Status_CREATED && old.Pid == 0:
		case old.Status == tasktypes.Status_CREATED && o.resume:
			// The interrupted restart's own new task, never started: it is
			// deleted (runc kills a created container's waiting process)
			// and made again.
		case old.Status == tasktypes.Status_CREATED:
			// Its process exists and is waiting to be started: not exited.
			return fmt.Errorf("restart %s: task is created (pid %d), not exited: %w", k, old.Pid, errdefs.ErrConflict)
		default:
			return fmt.Errorf("restart %s: task is %s, not exited: %w", k, strings.ToLower(old.Status.String()), errdefs.ErrConflict)
		}
	}
	// Before the old task goes: it says where the output went, and a new
	// task that cannot have its output is not made.
	from := old
	if p, u := oldOutput(old); p == "" && u == "" && o.resume && o.previous != nil {
		// The interrupted restart's old task is gone, or its own new task
		// (which may not have got that far) is in the way: the old task's
		// output, as the caller saved it.
		from = &tasktypes.Process{Stdout: o.previous.Stdout, Stderr: o.previous.Stderr, Terminal: o.previous.Terminal}
	}
	stdout, stderr, err := r.restartIO(k, from)
	if err != nil {
		return err
	}
	if old != nil && old.Status == tasktypes.Status_CREATED && old.Pid != 0 && o.resume {
		r.leftovers.mark(k, old.Pid)
	}
	if old != nil {
		err := r.call(ctx, "task_delete", func(ctx context.Context) error {
			_, err := c.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: k.ID})
			return err
		})
		if errors.Is(err, errdefs.ErrNotFound) && o.requireTask {
			// Deleted under our feet: someone else's delete won.
			return fmt.Errorf("restart %s: %w", k, ErrTaskGone)
		}
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("restart %s: delete old task: %w", k, err)
		}
	}
	rootfs, err := r.rootfs(ctx, c, cc)
	if err != nil {
		return fmt.Errorf("restart %s: rootfs (%w): %w", k, ErrAfterDelete, err)
	}
	if err := r.createTask(ctx, c, k, rootfs, stdout, stderr, o.resume); err != nil {
		return fmt.Errorf("restart %s: create task (%w): %w", k, ErrAfterDelete, err)
	}
	if err := r.call(ctx, "task_start", func(ctx context.Context) error {
		_, err := c.tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: k.ID})
		return err
	}); err != nil {
		_ = r.call(context.WithoutCancel(ctx), "task_delete", func(ctx context.Context) error {
			if err := killAndWait(ctx, c, k.ID, ""); err != nil {
				return err
			}
			_, err := c.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: k.ID})
			return err
		})
		return fmt.Errorf("restart %s: start task (%w): %w", k, ErrAfterDelete, err)
	}
	return nil
}

// Bounds of createTask's clean-ups: how many leftovers it clears before
// giving up, and how long it waits for an earlier create still going on in
// containerd (its bundle in the way) to end.
const (
	maxCreateCleanups  = 5
	leftoverCreateWait = 10 * time.Second
	leftoverCreatePoll = 100 * time.Millisecond
)

// createTask creates k's task, clearing what an earlier, interrupted create
// of it left in containerd (the agent SIGKILLed in the middle of a restart,
// while containerd went on with the create):
//
//   - "task ID: already exists" while Get finds no task: containerd holds a
//     shim for the container whose task was never created (Get answers
//     "container not created"). Nobody can start it; it is deleted (which
//     stops the shim and removes its bundle) and the create made again.
//   - "already exists" with a task that Get finds created and never started,
//     or stopped: with resume, it is the interrupted restart's own and is
//     deleted (runc kills a created task's waiting process) and made again;
//     without, it is someone else's and the error wraps ErrCreateRaced.
//   - "already exists" with a running or paused task: ErrCreateRaced.
//   - "mkdir ...: file exists": the earlier create is still going on (its
//     bundle directory exists, its shim is not registered yet). createTask
//     waits for it to end (up to leftoverCreateWait), then handles what it
//     left as above; if it does not end, the error wraps ErrBundleLeft.
//   - "failed to start shim: ... no such file or directory": the earlier
//     create, failing, removed the bundle directory while this one's shim
//     was starting in it (seen as "getwd: no such file or directory" from
//     the shim). Handled as "file exists": waited for, then made again.
//
// It returns nil once a task it made is created; ctx bounds the waits.
func (r *Runtime) createTask(ctx context.Context, c *apiClient, k container.Key, rootfs []*apitypes.Mount, stdout, stderr string, resume bool) error {
	var bundleSince time.Time
	for cleanups := 0; ; {
		err := r.call(ctx, "task_create", func(ctx context.Context) error {
			_, err := c.tasks.Create(ctx, &tasksapi.CreateTaskRequest{
				ContainerID: k.ID,
				Rootfs:      rootfs,
				Stdout:      stdout,
				Stderr:      stderr,
			})
			return err
		})
		if err == nil {
			return nil
		}
		switch {
		case strings.Contains(err.Error(), "file exists"), bundleRemovedUnder(err):
			if bundleSince.IsZero() {
				bundleSince = time.Now()
			}
			if time.Since(bundleSince) > leftoverCreateWait {
				return fmt.Errorf("%w: %v", ErrBundleLeft, err)
			}
			r.metrics.countLeftover("bundle_wait")
			if err := sleepCtx(ctx, leftoverCreatePoll); err != nil {
				return fmt.Errorf("%w: %w", ErrBundleLeft, err)
			}
			continue
		case !strings.Contains(err.Error(), "already exists"):
			return err
		}
		if cleanups >= maxCreateCleanups {
			return fmt.Errorf("%w: still there after %d clean-ups: %v", ErrCreateRaced, cleanups, err)
		}
		cleanups++
		left, gerr := r.loadTask(ctx, c, k)
		switch {
		case errors.Is(gerr, errdefs.ErrNotFound):
			// A shim without a task.
			r.metrics.countLeftover("shim")
			r.log.Info("restart: deleting what an interrupted task create left (a shim without a task)", "namespace", k.Namespace, "id", k.ID)
		case gerr != nil:
			return gerr
		case resume && (left.Status == tasktypes.Status_CREATED || left.Status == tasktypes.Status_STOPPED || left.Status == tasktypes.Status_UNKNOWN):
			r.metrics.countLeftover("task")
			if left.Pid != 0 { // no process, no exit to tell apart
				r.leftovers.mark(k, left.Pid)
			}
			r.log.Info("restart: replacing the task an interrupted restart created", "namespace", k.Namespace, "id", k.ID, "status", strings.ToLower(left.Status.String()), "pid", left.Pid)
		default:
			return fmt.Errorf("%w: a %s task (pid %d): %v", ErrCreateRaced, strings.ToLower(left.Status.String()), left.Pid, err)
		}
		if derr := r.deleteLeftover(ctx, c, k); derr != nil {
			return fmt.Errorf("%w: deleting it: %w", ErrCreateRaced, derr)
		}
	}
}

// bundleRemovedUnder reports whether a create failed because the bundle
// directory its shim was starting in went away: an earlier, interrupted
// create of the same task cleaning up after itself.
func bundleRemovedUnder(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "failed to start shim") && strings.Contains(msg, "no such file or directory")
}

// deleteLeftover kills (a created task's waiting process) and deletes k's
// task, or the shim containerd holds for it; gone already is fine.
func (r *Runtime) deleteLeftover(ctx context.Context, c *apiClient, k container.Key) error {
	err := r.call(ctx, "task_delete", func(ctx context.Context) error {
		if err := killAndWait(ctx, c, k.ID, ""); err != nil && status.Code(err) != codes.NotFound {
			return err
		}
		_, err := c.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: k.ID})
		return err
	})
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	return nil
}

// sleepCtx waits d or until ctx ends (its error).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rootfs returns the mounts of container cc's snapshot (none when it has no
// snapshot: its spec names its root), with the spec's SELinux mount label.
func (r *Runtime) rootfs(ctx context.Context, c *apiClient, cc *containersapi.Container) ([]*apitypes.Mount, error) {
	if cc.SnapshotKey == "" {
		return nil, nil
	}
	if cc.Snapshotter == "" {
		return nil, fmt.Errorf("container %s has a snapshot key but no snapshotter: %w", cc.ID, errdefs.ErrInvalid)
	}
	spec, err := containerSpec(cc)
	if err != nil {
		return nil, err
	}
	var mounts []*apitypes.Mount
	if err := r.call(ctx, "snapshot_mounts", func(ctx context.Context) error {
		resp, err := c.snapshots.Mounts(ctx, &snapshotsapi.MountsRequest{Snapshotter: cc.Snapshotter, Key: cc.SnapshotKey})
		if err == nil {
			mounts = resp.Mounts
		}
		return err
	}); err != nil {
		return nil, err
	}
	if spec.Linux != nil && spec.Linux.MountLabel != "" {
		label := fmt.Sprintf("context=%q", spec.Linux.MountLabel)
		for _, m := range mounts {
			m.Options = append(m.Options, label)
		}
	}
	return mounts, nil
}

// restartIO chooses the new task's stdout and stderr: where the old task's
// went when that was a file or a logging binary (oldOutput), else a log file
// under LogDir, else nothing ("": containerd discards the output). A file is
// given as two plain paths (logFilePaths).
func (r *Runtime) restartIO(k container.Key, old *tasktypes.Process) (stdout, stderr string, err error) {
	path, uri := oldOutput(old)
	switch {
	case uri != "":
		return uri, uri, nil
	case path == "" && r.cfg.LogDir == "":
		return "", "", nil
	case path == "":
		dir := filepath.Join(r.cfg.LogDir, k.Namespace)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return "", "", fmt.Errorf("restart %s: log dir: %w: %v", k, errdefs.ErrPermission, err)
		}
		if path, err = filepath.Abs(filepath.Join(dir, k.ID+".log")); err != nil {
			return "", "", fmt.Errorf("restart %s: log file: %w: %v", k, errdefs.ErrInvalid, err)
		}
		if err := ensureFile(path); err != nil {
			return "", "", fmt.Errorf("restart %s: log file: %w: %v", k, errdefs.ErrPermission, err)
		}
	}
	stdout, stderr = logFilePaths(path)
	return stdout, stderr, nil
}

// oldOutput is where a task's output went, when a new task's can go there
// too: the path of a regular file, or a URI the shim opens itself (a
// logging binary; a file:// URI whose file the agent cannot see, a path
// outside its mounts). Neither for a terminal, or a FIFO of the client that
// made the task (ctr's, a client's own): the client is gone.
func oldOutput(old *tasktypes.Process) (path, uri string) {
	if old == nil || old.Stdout == "" || old.Terminal {
		return "", ""
	}
	u, err := url.Parse(old.Stdout)
	switch {
	case err != nil:
	case u.Scheme == "binary":
		return "", old.Stdout
	case u.Scheme == "file" && filepath.IsAbs(u.Path) && ensureFile(u.Path) == nil:
		return u.Path, ""
	case u.Scheme == "file":
		return "", old.Stdout
	case u.Scheme == "" && filepath.IsAbs(old.Stdout):
		// A plain path: a FIFO, or the file a restart gave (logFilePaths).
		if fi, err := os.Stat(old.Stdout); err == nil && fi.Mode().IsRegular() {
			return old.Stdout, ""
		}
	}
	return "", ""
}

// logFilePaths returns the stdout and stderr of a task whose output goes to
// the existing regular file path: two spellings of that one path.
//
// Not a file:// URI, although the shim supports that scheme. With it, the
// runc shim opens the file once for both streams and hands the stdout copy
// the file itself rather than the shared closer it gives the stderr copy:
// when stdout reaches its end at the task's exit, the file can be closed
// before the stderr copy has written, and the last thing the task wrote to
// stderr (the crash message one wants after a restart) is lost now and then
// (containerd 1.6 to 2.x; about one restart in thirty here under load). A
// plain path that is not a FIFO is a file the shim opens for appending
// (without creating it); two different strings make it open the file twice,
// each copy with its own descriptor that only it closes. O_APPEND keeps each
// write whole, as it did with one descriptor.
func logFilePaths(path string) (stdout, stderr string) {
	return path, filepath.Dir(path) + "/./" + filepath.Base(path)
}

// ensureFile makes path a regular file if it is not one yet, with the mode
// the shim gives a file:// URI's file, and fails when it is something else
// (O_NONBLOCK: a FIFO without a reader fails rather than blocks).
func ensureFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NONBLOCK, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

// ErrTaskGone: Restart with RequireTask found no exited task to replace,
// because someone else deleted it. It wraps errdefs.ErrNotFound.
var ErrTaskGone = fmt.Errorf("the exited task was deleted by someone else: %w", errdefs.ErrNotFound)

// ErrBundleLeft: containerd still has the bundle directory of an earlier
// create of the container's task ("mkdir .../io.containerd.runtime.v2.task/
// NS/ID: file exists") after Restart waited 10 s for that create to end.
// Seen with containerd 1.6.20 when the client of a task create dies in the
// middle of it (the agent SIGKILLed during a restart): the create goes on
// in containerd, and its bundle is in the way until it ends (a fraction of
// a second in TestRestartAfterInterruptedCreate; test/crash saw 30 s and
// more, until containerd restarts and cleans its state).
var ErrBundleLeft = fmt.Errorf("containerd still holds the bundle of an earlier, interrupted create of this task (restarting containerd clears it): %w", errdefs.ErrConflict)

// ErrAfterDelete is wrapped by a Restart that failed after the old task
// was deleted (getting the rootfs, creating or starting the new task): the
// container has no task now, and a next try must not require the old one
// (ResumeInterrupted).
var ErrAfterDelete = errors.New("the old task is deleted")

// ErrCreateRaced: a task of the container that Restart may not replace is
// in the way of its create ("task ID: already exists"): a running or
// paused task, or, without ResumeInterrupted, a created or stopped one
// (someone else's create). Also when a leftover keeps coming back after
// five clean-ups.
var ErrCreateRaced = fmt.Errorf("a task of this container that the restart may not replace is in the way of its create (running, or made by someone else): %w", errdefs.ErrConflict)

// RestartOption modifies Restart.
type RestartOption func(*restartOptions)

type restartOptions struct {
	requireTask, resume bool
	previous            *TaskOutput
}

// RequireTask makes Restart fail with ErrTaskGone, creating nothing, when
// the exited task is no longer there to replace.
func RequireTask() RestartOption { return func(o *restartOptions) { o.requireTask = true } }

// ResumeInterrupted makes Restart finish a restart that was interrupted
// after it began: a missing task is not an error, and a task created but
// never started is replaced rather than refused. Without RequireTask's
// guard: the caller knows the missing task was its own doing. When the old
// task is gone, so is where its output went: the new task's goes where
// PreviousOutput says, else to LogDir.
func ResumeInterrupted() RestartOption { return func(o *restartOptions) { o.resume = true } }

// PreviousOutput is where the output of the task an interrupted restart
// deleted went (Container.Output, as the caller saved it before the
// restart began): with ResumeInterrupted and no old task to read it from,
// the new task's output goes there, when a new task's can, rather than to
// LogDir.
func PreviousOutput(out TaskOutput) RestartOption {
	return func(o *restartOptions) { o.previous = &out }
}

// leftoverTTL bounds how long a leftover's mark waits for its events.
const leftoverTTL = 2 * time.Minute

// leftoverMarks are the tasks Restart is clearing as leftovers, by
// container and pid, so that their exit and delete events are marked
// Event.Leftover. Bounded by the containers restarted within leftoverTTL.
type leftoverMarks struct {
	mu sync.Mutex
	m  map[container.Key]leftoverMark
}

type leftoverMark struct {
	pid uint32
	at  time.Time
}

// mark records that k's task pid is being cleared as a leftover.
func (l *leftoverMarks) mark(k container.Key, pid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[container.Key]leftoverMark)
	}
	now := time.Now()
	for key, m := range l.m {
		if now.Sub(m.at) > leftoverTTL {
			delete(l.m, key)
		}
	}
	l.m[k] = leftoverMark{pid: pid, at: now}
}

// is reports whether an event of k's task pid is a leftover's; forget
// drops the mark (the task's delete is its last event). A pid of 0 (not in
// the event) matches the mark of the container.
func (l *leftoverMarks) is(k container.Key, pid uint32, forget bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	m, ok := l.m[k]
	if !ok || time.Since(m.at) > leftoverTTL || (pid != 0 && m.pid != 0 && pid != m.pid) {
		return false
	}
	if forget {
		delete(l.m, k)
	}
	return true
}
