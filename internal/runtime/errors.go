package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// translateErr maps an error from containerd (a gRPC status, one of
// containerd's errdefs, a dial error) onto Vigil's vocabulary once, at the
// boundary. The original message is kept; context errors stay testable with
// errors.Is.
func translateErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
	}
	// Already in Vigil's vocabulary (this package's own checks on what
	// containerd answered): keep it.
	for _, sentinel := range []error{errdefs.ErrNotFound, errdefs.ErrUnavailable, errdefs.ErrInvalid, errdefs.ErrConflict, errdefs.ErrPermission} {
		if errors.Is(err, sentinel) {
			return err
		}
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.OK && s.Code() != codes.Unknown {
		err = errgrpc.ToNative(err)
	}
	var sentinel error
	switch {
	case cerrdefs.IsNotFound(err):
		sentinel = errdefs.ErrNotFound
	case cerrdefs.IsUnavailable(err), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		sentinel = errdefs.ErrUnavailable
	case cerrdefs.IsInvalidArgument(err), cerrdefs.IsOutOfRange(err):
		sentinel = errdefs.ErrInvalid
	case cerrdefs.IsAlreadyExists(err), cerrdefs.IsFailedPrecondition(err), cerrdefs.IsConflict(err), cerrdefs.IsAborted(err):
		sentinel = errdefs.ErrConflict
	case cerrdefs.IsPermissionDenied(err), cerrdefs.IsUnauthorized(err):
		sentinel = errdefs.ErrPermission
	case cerrdefs.IsDeadlineExceeded(err):
		return fmt.Errorf("%w: %w: %v", errdefs.ErrUnavailable, context.DeadlineExceeded, err)
	case cerrdefs.IsCanceled(err):
		return fmt.Errorf("%w: %w: %v", errdefs.ErrUnavailable, context.Canceled, err)
	case shimLost(err.Error()):
		return fmt.Errorf("%w: %v", ErrShimLost, err)
	default:
		// Unknown, internal, not implemented: containerd failed for its
		// own reasons; keep the message, with no sentinel to match.
		return errors.New(err.Error())
	}
	return fmt.Errorf("%w: %v", sentinel, err)
}

// ErrShimLost: containerd lost its connection to the task's shim in the
// middle of the call (the shim exited, was killed, or its socket was
// reset), so the call's outcome inside the shim is unknown. It wraps
// errdefs.ErrUnavailable: containerd's side of the task did not answer,
// and trying again (with ResumeInterrupted, for a Restart: a task may be
// left) may work. Callers that must not retry it forever tell it apart
// with errors.Is(err, ErrShimLost) before testing ErrUnavailable.
var ErrShimLost = fmt.Errorf("containerd lost the task's shim during the call (it exited or its connection closed): %w", errdefs.ErrUnavailable)

// shimLost reports whether containerd's message (code Unknown: containerd
// gives these no code of their own) says it lost the shim's transport.
// What containerd 1.6 and 2.x return then, read in their
// runtime/v2 (core/runtime/v2) task manager and shim client, and in ttrpc:
//
//   - "ttrpc: closed" (ttrpc.ErrClosed): the shim's ttrpc connection ended
//     while containerd waited for its answer: EOF, a reset on read, a broken
//     pipe on write, a closed connection. The shim's task client passes it
//     through errgrpc.ToNative (errdefs.FromGRPC in 1.6, which appends
//     ": unknown"), and the task manager prefixes a create's with "failed
//     to create shim task: ". test/crash saw, and
//     TestRestartShimKilledInCreate provokes on 1.6.20, "failed to create
//     shim task: ttrpc: closed: unknown"; a start answers "ttrpc: closed"
//     (": unknown" on 1.6).
//   - "connection reset by peer": a reset that ttrpc does not fold into
//     ErrClosed (it does only on read).
//   - "failed to start shim" with "connection refused": the shim printed
//     its address and died before containerd connected to it.
//
// A shim that fails to start for its own reasons (an exit status, a
// missing binary) is not matched: that is no transport failure.
func shimLost(msg string) bool {
	return strings.Contains(msg, "ttrpc: closed") ||
		strings.Contains(msg, "connection reset by peer") ||
		(strings.Contains(msg, "failed to start shim") && strings.Contains(msg, "connection refused"))
}
