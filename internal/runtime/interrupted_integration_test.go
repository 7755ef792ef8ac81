package runtime

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/testenv"
)

// TestRestartAfterInterruptedCreate: a restart whose task create was
// interrupted inside containerd (the agent SIGKILLed while containerd went
// on with the create: here, the create's context ends after d, for d swept
// from 0 to 180 ms in 20 ms steps, so that the interruption lands before, during and after
// the shim's start and runc's create) is finished by ONE Restart call with
// ResumeInterrupted, whatever containerd was left holding: its bundle
// ("mkdir ...: file exists", the create still going on), a shim without a
// task ("already exists" while Get answers NotFound), or a created task.
// After each, the container's task runs, and only one shim serves it.
// Before createTask cleared them, the first Restart failed with
// ErrBundleLeft or ErrCreateRaced at most delays here.
func TestRestartAfterInterruptedCreate(t *testing.T) {
	if testing.Short() {
		t.Skip("sweeps 10 interrupted creates against containerd")
	}
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, LogDir: t.TempDir(), CallTimeout: 30 * time.Second})
	ctx := namespaces.WithNamespace(context.Background(), ns)
	const id = "c"
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: id, Image: image, Args: []string{"sh", "-c", "exec sleep 600 <&-"}})
	k := container.Key{Namespace: ns, ID: id}
	w.waitForKey(k, EventStarted)
	c, err := w.connected()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := w.loadContainer(ctx, c, k)
	if err != nil {
		t.Fatal(err)
	}
	rootfs, err := w.rootfs(ctx, c, cc)
	if err != nil {
		t.Fatal(err)
	}
	for d := time.Duration(0); d < 200*time.Millisecond; d += 20 * time.Millisecond {
		if err := w.Kill(ctx, k, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "task stopped", func() bool {
			p, err := w.loadTask(ctx, c, k)
			return err == nil && p.Status == tasktypes.Status_STOPPED
		})
		// As far as the interrupted restart got: the old task deleted, a
		// create begun and its client gone after d.
		if _, err := c.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, d)
		_, cerr := c.tasks.Create(cctx, &tasksapi.CreateTaskRequest{ContainerID: id, Rootfs: rootfs})
		cancel()
		_, gerr := c.tasks.Get(ctx, &tasksapi.GetRequest{ContainerID: id})
		if err := w.Restart(ctx, k, ResumeInterrupted()); err != nil {
			t.Fatalf("interrupted after %v (create: %v; get then: %v): Restart: %v", d, cerr, gerr, err)
		}
		p, err := w.loadTask(ctx, c, k)
		if err != nil || p.Status != tasktypes.Status_RUNNING || syscall.Kill(int(p.Pid), 0) != nil {
			t.Fatalf("interrupted after %v: after Restart the task is %v (pid %d), %v; want running", d, p.GetStatus(), p.GetPid(), err)
		}
	}
	if n := shimsOf(t, ns, id); n != 1 {
		t.Errorf("%d shims serve %s/%s, want 1 (a leftover shim leaked)", n, ns, id)
	}
	var out bytes.Buffer
	reg := metrics.NewRegistry()
	reg.Register(w.metrics.leftovers)
	if _, err := reg.WriteTo(&out); err != nil {
		t.Fatal(err)
	}
	t.Logf("clean-ups of what the interrupted creates left:\n%s", out.String())
}

// shimsOf counts the shim processes started for container ns/id.
func shimsOf(t *testing.T, ns, id string) int {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("containerd-shim")) {
			continue
		}
		if bytes.Contains(b, []byte("\x00-namespace\x00"+ns+"\x00")) && bytes.Contains(b, []byte("\x00-id\x00"+id+"\x00")) {
			n++
		}
	}
	return n
}

// createFault wraps containerd's real task service and answers the first
// Create as containerd 1.6.20 does after an interrupted create (which a
// real containerd cannot be made to leave on demand): "task ID: already
// exists". With through, that first Create is carried out first, so a
// created, never started task is left behind, as when the agent died
// between create and start.
type createFault struct {
	tasksapi.TasksClient
	through bool
	creates atomic.Int32
	deletes atomic.Int32
}

func (f *createFault) Create(ctx context.Context, in *tasksapi.CreateTaskRequest, opts ...grpc.CallOption) (*tasksapi.CreateTaskResponse, error) {
	if f.creates.Add(1) == 1 {
		if f.through {
			if _, err := f.TasksClient.Create(ctx, in, opts...); err != nil {
				return nil, err
			}
		}
		return nil, status.Errorf(codes.AlreadyExists, "task %s: already exists", in.ContainerID)
	}
	return f.TasksClient.Create(ctx, in, opts...)
}

func (f *createFault) Delete(ctx context.Context, in *tasksapi.DeleteTaskRequest, opts ...grpc.CallOption) (*tasksapi.DeleteResponse, error) {
	f.deletes.Add(1)
	return f.TasksClient.Delete(ctx, in, opts...)
}

// TestRestartClearsLeftoverOnAlreadyExists: a restart whose create meets
// "already exists" clears what is in the way and finishes, in one call:
// with Get answering NotFound (a shim without a task), the shim is deleted
// and the task made; with a created, never started task (resume), that
// task is deleted and made again. Without ResumeInterrupted, someone
// else's created task is left alone (ErrCreateRaced). Before createTask,
// each of these failed with ErrCreateRaced and the agent's policy gave up
// after 10.
func TestRestartClearsLeftoverOnAlreadyExists(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, LogDir: t.TempDir(), CallTimeout: 30 * time.Second})
	ctx := namespaces.WithNamespace(context.Background(), ns)
	real, err := w.connected()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		through bool
		opts    []RestartOption
		wantErr error
		deletes int32
	}{
		{name: "shim-without-task", opts: []RestartOption{ResumeInterrupted()}, deletes: 1},
		{name: "shim-without-task-policy", opts: []RestartOption{RequireTask()}, deletes: 2}, // the old task, then the shim
		{name: "created-task-resumed", through: true, opts: []RestartOption{ResumeInterrupted()}, deletes: 1},
		{name: "created-task-someone-elses", through: true, wantErr: ErrCreateRaced},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := container.Key{Namespace: ns, ID: tc.name}
			env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: k.ID, Image: image, Args: []string{"sh", "-c", "exec sleep 600 <&-"}})
			w.waitForKey(k, EventStarted)
			if err := w.Kill(ctx, k, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			w.waitForKey(k, EventExited)
			if tc.deletes == 1 || tc.wantErr != nil {
				// As far as the interrupted restart got: old task deleted.
				if _, err := real.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: k.ID}); err != nil {
					t.Fatal(err)
				}
			}
			fault := &createFault{TasksClient: real.tasks, through: tc.through}
			faulty := *real
			faulty.tasks = fault
			w.client.Store(&faulty)
			defer w.client.CompareAndSwap(&faulty, real)
			err := w.Restart(ctx, k, tc.opts...)
			w.client.CompareAndSwap(&faulty, real)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Restart: %v, want %v", err, tc.wantErr)
				}
				p, err := w.loadTask(ctx, real, k)
				if err != nil || p.Status != tasktypes.Status_CREATED {
					t.Errorf("someone else's created task after a refused Restart: %v, %v", p.GetStatus(), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Restart: %v", err)
			}
			if got := fault.deletes.Load(); got != tc.deletes {
				t.Errorf("%d task deletes, want %d", got, tc.deletes)
			}
			p, err := w.loadTask(ctx, real, k)
			if err != nil || p.Status != tasktypes.Status_RUNNING || syscall.Kill(int(p.Pid), 0) != nil {
				t.Fatalf("after Restart the task is %v (pid %d), %v; want running", p.GetStatus(), p.GetPid(), err)
			}
			if n := shimsOf(t, ns, k.ID); n != 1 {
				t.Errorf("%d shims serve %s, want 1", n, k.ID)
			}
			if tc.through {
				// The replaced created task's exit is the next exit of
				// the container: marked as the leftover it was.
				ev := w.waitForKey(k, EventExited)
				if !ev.Leftover {
					t.Errorf("the replaced leftover's exit %+v is not marked Leftover", ev.Exit)
				}
				if ev := w.waitForKey(k, EventStarted); ev.Leftover {
					t.Errorf("the new task's start is marked Leftover")
				}
			}
		})
	}
}
