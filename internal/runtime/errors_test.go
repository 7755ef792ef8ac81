package runtime

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// containerdShimError builds a failure of a shim call the way containerd
// 2.x's task service answers it: the shim's task client passes the ttrpc
// error through errgrpc.ToNative, the task manager may wrap it (prefix),
// and the service sends errgrpc.ToGRPC of that: code Unknown.
func containerdShimError(prefix string, shimErr error) error {
	err := errgrpc.ToNative(shimErr)
	if prefix != "" {
		err = fmt.Errorf("%s: %w", prefix, err)
	}
	return errgrpc.ToGRPC(err)
}

// What containerd answers when it loses a task's shim during the call is
// ErrShimLost (an errdefs.ErrUnavailable); a create or start that failed
// for its own reasons is not.
func TestTranslateErrShimLost(t *testing.T) {
	// ttrpc.ErrClosed, by its message: what the ttrpc client returns for
	// EOF, a reset on read or a broken pipe on write of the shim's socket.
	ttrpcClosed := errors.New("ttrpc: closed")
	lostInCreate := containerdShimError("failed to create shim task", ttrpcClosed)
	if s, _ := status.FromError(lostInCreate); s.Code() != codes.Unknown || s.Message() != "failed to create shim task: ttrpc: closed" {
		t.Fatalf("containerd 2.x's answer built as %v %q", s.Code(), s.Message())
	}
	// containerd 1.6 (the old errdefs.FromGRPC adds the class, ": unknown"):
	// the message test/crash logged, and TestRestartShimKilledInCreate gets
	// from the 1.6.20 these tests run.
	lostInCreate16 := status.Error(codes.Unknown, "failed to create shim task: ttrpc: closed: unknown")
	for _, r := range []struct {
		name           string
		err            error
		lost           bool
		sentinel       error // the sentinel it must (still) carry; nil: none
		notUnavailable bool
	}{
		{"create: the shim died (containerd 2.x)", lostInCreate, true, errdefs.ErrUnavailable, false},
		{"create: the shim died (containerd 1.6, test/crash)", lostInCreate16, true, errdefs.ErrUnavailable, false},
		{"start: the shim died", containerdShimError("", ttrpcClosed), true, errdefs.ErrUnavailable, false},
		{"a write reset on the shim's socket", containerdShimError("failed to create shim task",
			errors.New("write unix @->/run/containerd/s/0a1b: write: connection reset by peer")), true, errdefs.ErrUnavailable, false},
		{"the shim gone before containerd connected", status.Error(codes.Unknown,
			"failed to start shim: dial unix /run/containerd/s/0a1b: connect: connection refused"), true, errdefs.ErrUnavailable, false},
		// Not a shim lost.
		{"runc refused the spec", containerdShimError("failed to create shim task",
			errors.New(`OCI runtime create failed: runc create failed: unable to start container process: exec: "nope": executable file not found in $PATH`)), false, nil, true},
		{"the shim binary failed to start", status.Error(codes.Unknown, "failed to start shim: start failed: exit status 1"), false, nil, true},
		{"containerd's own connection reset: unavailable, not a shim", status.Error(codes.Unavailable,
			"connection error: desc = \"transport: Error while dialing: read unix @->/run/containerd/containerd.sock: read: connection reset by peer\""), false, errdefs.ErrUnavailable, false},
		{"not found stays not found", status.Error(codes.NotFound, "container \"c\" in namespace \"ns\": not found"), false, errdefs.ErrNotFound, true},
	} {
		got := translateErr(r.err)
		if errors.Is(got, ErrShimLost) != r.lost {
			t.Errorf("%s: %v: shim lost %v, want %v", r.name, got, !r.lost, r.lost)
		}
		if r.sentinel != nil && !errors.Is(got, r.sentinel) {
			t.Errorf("%s: %v: not %v", r.name, got, r.sentinel)
		}
		if r.notUnavailable && errors.Is(got, errdefs.ErrUnavailable) {
			t.Errorf("%s: %v: unavailable", r.name, got)
		}
		if r.lost && got.Error() == "" {
			t.Errorf("%s: message lost", r.name)
		}
	}
	// Through the call boundary, as Restart's create returns it.
	rt, err := New(Config{Address: "x"})
	if err != nil {
		t.Fatal(err)
	}
	err = rt.call(context.Background(), "task_create", func(context.Context) error { return lostInCreate })
	if !errors.Is(err, ErrShimLost) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("call: %v, want ErrShimLost", err)
	}
}
