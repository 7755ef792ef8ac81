package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// processSpecType is the type URL of an OCI process spec (JSON) in an
// exec request, as containerd's own client names it.
var processSpecType = "types.containerd.io/opencontainers/runtime-spec/" + strconv.Itoa(specs.VersionMajor) + "/Process"

// Exec runs args in k's running task, with the container's process spec
// (user, env, cwd) and no terminal, and returns its exit code and its
// stdout and stderr interleaved, of which the first outputCap bytes are
// kept (0: 64 KiB). When ctx ends first the process is killed and the error
// wraps ctx.Err() (context.DeadlineExceeded for a timeout).
func (r *Runtime) Exec(ctx context.Context, k container.Key, args []string, outputCap int) (ExecResult, error) {
	if len(args) == 0 {
		return ExecResult{}, fmt.Errorf("exec in %s: no command: %w", k, errdefs.ErrInvalid)
	}
	if outputCap <= 0 {
		outputCap = defaultExecOutputCap
	}
	c, err := r.connected()
	if err != nil {
		return ExecResult{}, err
	}
	ctx = namespaces.WithNamespace(ctx, k.Namespace)
	cc, err := r.loadContainer(ctx, c, k)
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: %w", k, err)
	}
	spec, err := containerSpec(cc)
	if err == nil && spec.Process == nil {
		err = fmt.Errorf("container spec has no process: %w", errdefs.ErrInvalid)
	}
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: %w", k, err)
	}
	pspec := spec.Process
	pspec.Args = args
	pspec.Terminal = false
	pspec.ConsoleSize = nil
	pjson, err := json.Marshal(pspec)
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: process spec: %w: %v", k, errdefs.ErrInvalid, err)
	}

	// stdout and stderr come through two FIFOs (in containerd's FIFO
	// directory) that the shim opens for writing; both are copied into out.
	out := &cappedBuffer{limit: outputCap}
	id := execID()
	pio, err := cio.NewCreator(cio.WithStreams(nil, out, out))(id)
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: output FIFOs: %w", k, err)
	}
	fifos := pio.Config()
	if err := r.call(ctx, "exec_create", func(ctx context.Context) error {
		_, err := c.tasks.Exec(ctx, &tasksapi.ExecProcessRequest{
			ContainerID: k.ID,
			ExecID:      id,
			Stdout:      fifos.Stdout,
			Stderr:      fifos.Stderr,
			Spec:        &anypb.Any{TypeUrl: processSpecType, Value: pjson},
		})
		return err
	}); err != nil {
		pio.Cancel()
		pio.Wait()
		_ = pio.Close()
		return ExecResult{}, fmt.Errorf("exec in %s: %w", k, err)
	}
	// The process outlives the caller's deadline until it is killed and
	// deleted: those calls use a context detached from ctx.
	bg := context.WithoutCancel(ctx)
	started, exited := false, false
	defer func() {
		dctx, cancel := context.WithTimeout(bg, cleanupTimeout)
		defer cancel()
		var err error
		if started && !exited {
			err = killAndWait(dctx, c, k.ID, id)
		}
		if err == nil {
			_, err = c.tasks.DeleteProcess(dctx, &tasksapi.DeleteProcessRequest{ContainerID: k.ID, ExecID: id})
		}
		if err != nil && !errors.Is(translateErr(err), errdefs.ErrNotFound) {
			r.log.Debug("exec delete failed", "namespace", k.Namespace, "id", k.ID, "exec", id, "err", err)
		}
		// The copies end when their FIFOs close: the shim's ends close
		// with the process, ours here. Close removes the FIFOs.
		pio.Cancel()
		pio.Wait()
		_ = pio.Close()
	}()
	wctx, cancelWait := context.WithCancel(bg)
	defer cancelWait()
	exitC := waitExit(wctx, c, k.ID, id)
	if err := r.call(ctx, "exec_start", func(ctx context.Context) error {
		_, err := c.tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: k.ID, ExecID: id})
		return err
	}); err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: %w", k, err)
	}
	started = true
	select {
	case st := <-exitC:
		exited = true
		drainExecIO(ctx, pio)
		if st.err != nil {
			return ExecResult{}, fmt.Errorf("exec in %s: wait: %w", k, translateErr(st.err))
		}
		return ExecResult{ExitCode: int(st.code), Output: out.Bytes()}, nil
	case <-ctx.Done():
		kctx, cancel := context.WithTimeout(bg, cleanupTimeout)
		defer cancel()
		_, _ = c.tasks.Kill(kctx, &tasksapi.KillRequest{ContainerID: k.ID, ExecID: id, Signal: uint32(syscall.SIGKILL)})
		select {
		case <-exitC:
			exited = true
		case <-kctx.Done():
		}
		pio.Cancel()
		return ExecResult{ExitCode: -1, Output: out.Bytes()}, fmt.Errorf("exec in %s: killed: %w", k, ctx.Err())
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
