package aggregator

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBindings: a name is bound to its first key, the same key may bind it
// again, another may not until it is released, a renewal moves it, the
// file survives a reopen, and the number of names is capped.
func TestBindings(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "node-bindings.json")
	b, err := openBindings(path, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.bind(ctx, "n1", "k1", "token a", false); err != nil {
		t.Fatal(err)
	}
	if err := b.bind(ctx, "n1", "k1", "token a", false); err != nil {
		t.Fatalf("the same key again: %v", err)
	}
	if err := b.bind(ctx, "n1", "k2", "token a", false); status.Code(err) != codes.AlreadyExists || !strings.Contains(err.Error(), "vigilctl nodes release n1") {
		t.Fatalf("another key: %v", err)
	}
	if err := b.bind(ctx, "n1", "k2", "renewal", true); err != nil {
		t.Fatalf("renewal with a new key: %v", err)
	}
	if err := b.bind(ctx, "n2", "k3", "token a", false); err != nil {
		t.Fatal(err)
	}
	if err := b.bind(ctx, "n3", "k4", "token a", false); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("beyond the cap: %v", err)
	}
	b2, err := openBindings(path, 2)
	if err != nil {
		t.Fatal(err)
	}
	if fp, ok, err := b2.release(ctx, "n1"); err != nil || !ok || fp != "k2" {
		t.Fatalf("release after reopen: %q %v %v", fp, ok, err)
	}
	if err := b2.bind(ctx, "n3", "k4", "token a", false); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openBindings(path, 2); err == nil || !strings.Contains(err.Error(), "fix or move the file") {
		t.Fatalf("a corrupt file: %v", err)
	}
}
