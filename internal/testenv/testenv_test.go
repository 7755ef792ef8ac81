package testenv

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
)

func TestMain(m *testing.M) { os.Exit(Run(m)) }

func TestBusyboxEchoExitsZero(t *testing.T) {
	e := Containerd(t)
	ref := e.BusyboxImage(t, "testenv")
	_, task := e.RunContainer(t, ContainerSpec{Namespace: "testenv", Image: ref, Args: []string{"echo", "hello"}})
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "testenv"), 30*time.Second)
	defer cancel()
	statusC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = syscall.SIGTERM
	st := <-statusC
	if st.ExitCode() != 0 {
		t.Fatalf("exit code %d", st.ExitCode())
	}
}
