package network

import (
	"os"
	"slices"
	"testing"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// TestCRIPodVethMapsToPod runs a pod through CRI (CNI bridge networking, as
// the kubelet would) and checks that the host end of its veth, on the real
// host namespace where the CNI plugin put it, is named by the pod's sandbox.
// The host namespace is only read.
func TestCRIPodVethMapsToPod(t *testing.T) {
	env := testenv.Containerd(t)
	image := env.BusyboxImage(t, "k8s.io")
	pod := env.RunPod(t, testenv.PodSpec{Namespace: "net", Name: "veth-owner", Containers: []testenv.PodContainer{
		{Name: "app", Image: image, Args: []string{"sleep", "600"}},
	}})

	m, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	sandbox := container.Key{Namespace: "k8s.io", ID: pod.SandboxID}
	app := container.Key{Namespace: "k8s.io", ID: pod.ContainerIDs["app"]}
	// The app container first: the sandbox still names the namespace.
	if err := m.Attach(app, Source{Path: pod.NetNSPath}); err != nil {
		t.Fatal(err)
	}
	if err := m.Attach(sandbox, Source{Path: pod.NetNSPath, Primary: true}); err != nil {
		t.Fatal(err)
	}
	id, err := statNS(pod.NetNSPath)
	if err != nil {
		t.Fatal(err)
	}
	snap := read(t, m)
	podNS := mustNS(t, snap, id.Ino)
	eth0 := mustLink(t, podNS, "eth0")
	if !slices.Contains(eth0.Addresses, pod.IP+"/24") {
		t.Errorf("pod eth0 addresses = %v, want %s/24 among them", eth0.Addresses, pod.IP)
	}
	if eth0.Partner == nil || !eth0.Partner.Host {
		t.Fatalf("pod eth0 peer = %+v, want a host link", eth0.Partner)
	}
	hostEnd := mustLink(t, snap.Host(), eth0.Partner.Name)
	if hostEnd.Partner == nil || hostEnd.Partner.Owner != sandbox || hostEnd.Partner.NetNSInode != id.Ino {
		t.Errorf("host %s peer = %+v, want owner %v in namespace %d", hostEnd.Name, hostEnd.Partner, sandbox, id.Ino)
	}
	if hostEnd.Kind != "veth" {
		t.Errorf("host end %s kind = %q, want veth", hostEnd.Name, hostEnd.Kind)
	}
	// testenv's CNI network deliberately gives pods no route off the
	// bridge, which is what NoDefaultRoute is for.
	if podNS.HasDefaultRoute || len(podNS.Conditions) != 1 || podNS.Conditions[0].Type != ConditionNoDefaultRoute {
		t.Errorf("pod namespace: default route %t, conditions %+v; want none and only NoDefaultRoute", podNS.HasDefaultRoute, podNS.Conditions)
	}
	var found bool
	for _, i := range snap.Host().Proto().GetInterfaces() {
		if i.GetName() == hostEnd.Name {
			found = i.GetOwnerNamespace() == "k8s.io" && i.GetOwnerContainerId() == pod.SandboxID
		}
	}
	if !found {
		t.Errorf("host %s as proto does not name the sandbox %s", hostEnd.Name, pod.SandboxID)
	}
}
