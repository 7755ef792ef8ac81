package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"syscall"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// cleanupTimeout bounds the clean-up calls made after the caller's context
// has ended (killing and deleting a timed-out exec process).
const cleanupTimeout = 5 * time.Second

// connected returns the current client, or ErrUnavailable.
func (r *Runtime) connected() (*apiClient, error) {
	c := r.client.Load()
	if c == nil {
		return nil, fmt.Errorf("containerd at %s not connected: %w", r.cfg.Address, errdefs.ErrUnavailable)
	}
	return c, nil
}

// loadContainer reads container k's record (ctx carries k's namespace).
func (r *Runtime) loadContainer(ctx context.Context, c *apiClient, k container.Key) (*containersapi.Container, error) {
	var cc *containersapi.Container
	err := r.call(ctx, "container_load", func(ctx context.Context) error {
		resp, err := c.containers.Get(ctx, &containersapi.GetContainerRequest{ID: k.ID})
		if err != nil {
			return err
		}
		if cc = resp.GetContainer(); cc == nil {
			return fmt.Errorf("empty answer: %w", errdefs.ErrNotFound)
		}
		return nil
	})
	return cc, err
}

// loadTask reads the state of k's task (ctx carries k's namespace); a
// container without a task, or no container, is ErrNotFound.
func (r *Runtime) loadTask(ctx context.Context, c *apiClient, k container.Key) (*tasktypes.Process, error) {
	var p *tasktypes.Process
	err := r.call(ctx, "task_load", func(ctx context.Context) error {
		resp, err := c.tasks.Get(ctx, &tasksapi.GetRequest{ContainerID: k.ID})
		if err != nil {
			return err
		}
		if p = resp.GetProcess(); p == nil {
			return fmt.Errorf("empty answer: %w", errdefs.ErrNotFound)
		}
		return nil
	})
	return p, err
}

// containerSpec decodes the OCI spec (JSON) of container record cc.
func containerSpec(cc *containersapi.Container) (*specs.Spec, error) {
	if len(cc.GetSpec().GetValue()) == 0 {
		return nil, fmt.Errorf("container %s has no OCI spec: %w", cc.ID, errdefs.ErrInvalid)
	}
	var s specs.Spec
	if err := json.Unmarshal(cc.Spec.Value, &s); err != nil {
		return nil, fmt.Errorf("container %s: OCI spec: %w: %v", cc.ID, errdefs.ErrInvalid, err)
	}
	return &s, nil
}

// exitStatus is the outcome of a wait for a process's exit.
type exitStatus struct {
	code uint32
	err  error // the wait failed (process deleted, containerd gone, ctx ended)
}

// waitExit waits in the background for the exit of task id (execID "") or
// of its exec process execID, until ctx ends. The channel receives exactly
// one value; the goroutine ends with the wait.
func waitExit(ctx context.Context, c *apiClient, id, execID string) <-chan exitStatus {
	ch := make(chan exitStatus, 1)
	go func() {
		resp, err := c.tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id, ExecID: execID})
		if err != nil {
			ch <- exitStatus{err: err}
			return
		}
		ch <- exitStatus{code: resp.ExitStatus}
	}()
	return ch
}

// killAndWait sends SIGKILL to every process of task id (execID "") or to
// exec process execID, and waits for its exit until ctx ends. A process
// that has already exited, or never started, is not an error.
func killAndWait(ctx context.Context, c *apiClient, id, execID string) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	exitC := waitExit(wctx, c, id, execID)
	_, err := c.tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: id, ExecID: execID, Signal: uint32(syscall.SIGKILL), All: true})
	switch status.Code(err) {
	case codes.OK, codes.NotFound: // NotFound: it has exited; the wait returns at once
	case codes.FailedPrecondition: // not started, or already stopped
		return nil
	default:
		return err
	}
	select {
	case <-exitC:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Kill sends sig to the task's init process. A container without a task is
// ErrNotFound.
func (r *Runtime) Kill(ctx context.Context, k container.Key, sig syscall.Signal) error {
	c, err := r.connected()
	if err != nil {
		return err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	err = r.call(ctx, "task_kill", func(ctx context.Context) error {
		_, err := c.tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: k.ID, Signal: uint32(sig)})
		return err
	})
	if err != nil {
		return fmt.Errorf("container %s: %w", k, err)
	}
	return nil
}

// Paused reports whether k's task is paused (or being paused): its
// processes are frozen and cannot answer a health probe. It asks containerd
// (and so the task's shim), not the inventory, which learns of a pause only
// when its event arrives. A container without a task is ErrNotFound.
func (r *Runtime) Paused(ctx context.Context, k container.Key) (bool, error) {
	c, err := r.connected()
	if err != nil {
		return false, err
	}
	p, err := r.loadTask(namespaces.WithNamespace(ctx, k.Namespace), c, k)
	if err != nil {
		return false, fmt.Errorf("container %s: %w", k, err)
	}
	return p.Status == tasktypes.Status_PAUSED || p.Status == tasktypes.Status_PAUSING, nil
}

// StopOption changes how Stop asks a task to stop.
type StopOption func(*stopOptions)

type stopOptions struct{ signal syscall.Signal }

// WithStopSignal makes Stop send sig first instead of SIGTERM (the image's
// STOPSIGNAL: a shell as PID 1 ignores SIGTERM). 0 keeps SIGTERM.
func WithStopSignal(sig syscall.Signal) StopOption {
	return func(o *stopOptions) {
		if sig != 0 {
			o.signal = sig
		}
	}
}

// Stop sends SIGTERM (or WithStopSignal's signal), waits up to grace for
// the task to exit, then sends SIGKILL and waits until it exits or ctx
// ends. A paused task is resumed first (a frozen process cannot handle a
// signal). Stopping a task that has already exited is a no-op; the task is
// not deleted.
func (r *Runtime) Stop(ctx context.Context, k container.Key, grace time.Duration, opts ...StopOption) error {
	o := stopOptions{signal: syscall.SIGTERM}
	for _, opt := range opts {
		opt(&o)
	}
	c, err := r.connected()
	if err != nil {
		return err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Wait first: an exit between the status read and the signal is seen
	// (a wait on an exited task returns at once).
	exitC := waitExit(wctx, c, k.ID, "") // the wait outlives each call's deadline
	p, err := r.loadTask(ctx, c, k)
	if err != nil {
		return fmt.Errorf("container %s: %w", k, err)
	}
	switch p.Status {
	case tasktypes.Status_STOPPED:
		return nil
	case tasktypes.Status_PAUSED, tasktypes.Status_PAUSING:
		if err := r.call(ctx, "task_resume", func(ctx context.Context) error {
			_, err := c.tasks.Resume(ctx, &tasksapi.ResumeTaskRequest{ContainerID: k.ID})
			return err
		}); err != nil {
			return err
		}
	}
	kill := func(sig syscall.Signal) error {
		return r.call(ctx, "task_kill", func(ctx context.Context) error {
			_, err := c.tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: k.ID, Signal: uint32(sig)})
			return err
		})
	}
	if err := kill(o.signal); err != nil {
		return err
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-exitC:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w: %w", k, errdefs.ErrUnavailable, ctx.Err())
	case <-t.C:
	}
	if err := kill(syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case <-exitC:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: no exit after SIGKILL: %w: %w", k, errdefs.ErrUnavailable, ctx.Err())
	}
}
