package runtime

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/testenv"
)

// TestRestartShimKilledInCreate: when the shim dies in the middle of a
// restart's create (a createRuntime hook SIGKILLs it: containerd loses
// the shim as test/crash saw under load), Restart fails with ErrShimLost,
// an errdefs.ErrUnavailable past the old task's delete (ErrAfterDelete),
// and a resumed Restart then makes and starts the task.
func TestRestartShimKilledInCreate(t *testing.T) {
	t.Parallel()
	env := testenv.Containerd(t)
	ns := uniqueNS(t)
	image := env.BusyboxImage(t, ns)
	marker := filepath.Join(t.TempDir(), "kill-shim")
	w := startRuntime(t, env, Config{Namespaces: []string{ns}, LogDir: t.TempDir()})
	env.RunContainer(t, testenv.ContainerSpec{Namespace: ns, ID: "shimkill", Image: image, Args: []string{"true"}, Hooks: testenv.KillShimHooks(marker)})
	k := container.Key{Namespace: ns, ID: "shimkill"}
	w.waitForKey(k, EventExited)

	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), ns)
	err := w.Restart(ctx, k, RequireTask())
	if !errors.Is(err, ErrShimLost) || !errors.Is(err, errdefs.ErrUnavailable) || !errors.Is(err, ErrAfterDelete) {
		t.Fatalf("Restart whose shim dies in the create: %v, want ErrShimLost after the delete", err)
	}
	t.Logf("containerd answered: %v", err)
	// Again, resumed (the old task is gone): the same, nothing in the way.
	if err := w.Restart(ctx, k, ResumeInterrupted()); !errors.Is(err, ErrShimLost) {
		t.Fatalf("resumed Restart whose shim dies again: %v, want ErrShimLost", err)
	}

	if err := os.Remove(marker); err != nil {
		t.Fatal(err)
	}
	if err := w.Restart(ctx, k, ResumeInterrupted()); err != nil {
		t.Fatalf("resumed Restart once the shim lives: %v", err)
	}
	if ev := w.waitForKey(k, EventStarted); ev.Container.Pid == 0 {
		t.Errorf("started without a pid: %+v", ev.Container)
	}
}
