package errdefs

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{ErrNotFound, codes.NotFound},
		{ErrUnavailable, codes.Unavailable},
		{ErrInvalid, codes.InvalidArgument},
		{ErrConflict, codes.FailedPrecondition},
		{ErrPermission, codes.PermissionDenied},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
	} {
		wrapped := fmt.Errorf("container ns/x: %w", tc.err)
		g := GRPC(wrapped)
		if got := status.Code(g); got != tc.code {
			t.Errorf("GRPC(%v) code = %v, want %v", wrapped, got, tc.code)
		}
		back := FromGRPC(g)
		if !errors.Is(back, tc.err) {
			t.Errorf("FromGRPC(GRPC(%v)) = %v, does not wrap %v", wrapped, back, tc.err)
		}
		if back.Error() != wrapped.Error() {
			t.Errorf("message %q, want %q", back.Error(), wrapped.Error())
		}
	}
	if GRPC(nil) != nil || Code(nil) != codes.OK {
		t.Error("nil must map to nil / OK")
	}
	if got := Code(errors.New("boom")); got != codes.Internal {
		t.Errorf("unknown error code = %v, want Internal", got)
	}
	already := status.Error(codes.ResourceExhausted, "too big")
	if GRPC(already) != already {
		t.Error("a status error must pass through unchanged")
	}
}
