// Package errdefs is Vigil's small error vocabulary: every package wraps its
// errors around one of these sentinels with %w, callers test them with
// errors.Is, and the gRPC edge maps them to status codes in one place (GRPC
// and FromGRPC).
package errdefs

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	// ErrNotFound: the thing asked for does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: a dependency (containerd, the aggregator, a store) does
	// not answer now; trying again later may work.
	ErrUnavailable = errors.New("unavailable")
	// ErrInvalid: the input is malformed or out of range; retrying the same
	// input will fail the same way.
	ErrInvalid = errors.New("invalid argument")
	// ErrConflict: the request contradicts current state (already exists, a
	// fence no longer holds, wrong identity).
	ErrConflict = errors.New("conflict")
	// ErrPermission: the caller is not allowed to do this.
	ErrPermission = errors.New("permission denied")
)

// GRPC converts err into a gRPC status error. Errors that already carry a
// status keep it; the sentinels map to their codes; anything else is Internal.
// GRPC(nil) is nil.
func GRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}

// Code returns the gRPC code for err.
func Code(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, ErrNotFound):
		return codes.NotFound
	case errors.Is(err, ErrUnavailable):
		return codes.Unavailable
	case errors.Is(err, ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, ErrConflict):
		return codes.FailedPrecondition
	case errors.Is(err, ErrPermission):
		return codes.PermissionDenied
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return codes.Internal
}

// FromGRPC turns a gRPC status error back into an error wrapping the matching
// sentinel, so that callers of a remote API use errors.Is as for local ones.
func FromGRPC(err error) error {
	s, ok := status.FromError(err)
	if !ok || err == nil {
		return err
	}
	var sentinel error
	switch s.Code() {
	case codes.NotFound:
		sentinel = ErrNotFound
	case codes.Unavailable:
		sentinel = ErrUnavailable
	case codes.InvalidArgument:
		sentinel = ErrInvalid
	case codes.FailedPrecondition, codes.AlreadyExists:
		sentinel = ErrConflict
	case codes.PermissionDenied, codes.Unauthenticated:
		sentinel = ErrPermission
	case codes.DeadlineExceeded:
		sentinel = context.DeadlineExceeded
	case codes.Canceled:
		sentinel = context.Canceled
	default:
		return err
	}
	return &remoteError{msg: s.Message(), sentinel: sentinel, status: err}
}

type remoteError struct {
	msg      string
	sentinel error
	status   error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return []error{e.sentinel, e.status} }
