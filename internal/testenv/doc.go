// Package testenv is the integration-test harness: it installs missing system
// packages, runs a private containerd per test package, builds and imports
// test images without a registry, and creates kubelet-style pods through CRI.
//
// A package that uses it runs its tests through Run, which tears the
// containerd down when the tests are done:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }
//
//	func TestSomething(t *testing.T) {
//		e := testenv.Containerd(t) // skips unless root on Linux (fails under CI=true)
//		ref := e.WorkloadImage(t, "myns")
//		ctr, task := e.RunContainer(t, testenv.ContainerSpec{Namespace: "myns", Image: ref,
//			Args: []string{"serve", "--http", ":8080"}, NetNSPath: testenv.NewNetNS(t).Path})
//		...
//	}
//
// What an instance creates on the host, and teardown removes: a temp dir
// (root, state, socket, logs, CNI config and IPAM data), a bridge named
// "vgl<id>" with 10.2xx.y.1/24 (pods get addresses on it, no route beyond
// it, no masquerading, no forwarding), cgroups under /vigil-test-<id>, and
// the containers, pods and shims inside. A test binary that died before
// teardown (a -timeout panic) is cleaned up by the next one to start an
// instance. The workload binary is cached in $TMPDIR/vigil-testenv-cache,
// keyed by a hash of its sources. Layers are built with internal/ociimage
// (the release images' code): sorted entries, fixed times, reproducible.
//
// Under the testing.TB API is a layer for programs that are not tests (the
// demo, through test/chain): NewInstance starts a containerd in a given or
// temp dir on a given or random bridge, subnet and cgroup parent, which
// outlives its program; TeardownInstance removes it later from its dir
// alone; ImportImages and RunPod import the test images and create a
// kubelet-style pod through CRI with a context instead of a test.
//
// runc state: CRI tasks of an instance keep it under the instance's state
// dir. Plain containerd tasks (ctr, client.NewTask) keep it in the
// host-wide /run/containerd/runc/<namespace>/<id>, which containerd 1.6
// cannot move for them, so two instances must not run the same namespace
// and container id at once: give each test, and the demo, namespaces of
// its own (container ids from RunContainer are unique anyway).
package testenv
