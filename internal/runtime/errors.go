package runtime

import (
	"context"
	"errors"
	"fmt"
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
	default:
		// Unknown, internal, not implemented: containerd failed for its
		// own reasons; keep the message, with no sentinel to match.
		return errors.New(err.Error())
	}
	return fmt.Errorf("%w: %v", sentinel, err)
}
