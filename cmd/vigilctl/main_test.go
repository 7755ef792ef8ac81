package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		main() // exits
	}
	time.Local = time.UTC // event times in golden files
	os.Exit(m.Run())
}

// now is the clock of every test: fixture times are relative to it.
var now = time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)

func ts(ago time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-ago)) }

// fakeVigil serves fixed answers and records the requests it got. The CLI's
// formatting is pure logic over these answers; a fake is the right tool.
type fakeVigil struct {
	vigilv1.UnimplementedVigilServer
	mu           sync.Mutex
	lastList     *vigilv1.ListContainersRequest
	lastWatch    *vigilv1.WatchEventsRequest
	nodes        []*vigilv1.Node
	containers   []*vigilv1.NodeContainer
	events       []*vigilv1.WatchEventsResponse
	remediations []*vigilv1.Remediation
	// requested answers RequestRemediation; listRemediations, when set,
	// serves ListRemediations (n counts its calls from 1)
	requested             *vigilv1.Remediation
	listRemediations      func(n int, req *vigilv1.ListRemediationsRequest) (*vigilv1.ListRemediationsResponse, error)
	listRemediationsCalls int
	err                   error
	// watch, when set, serves WatchEvents instead of events and err; n
	// counts the calls from 1.
	watch   func(n int, req *vigilv1.WatchEventsRequest, stream vigilv1.Vigil_WatchEventsServer) error
	watches int
}

func (f *fakeVigil) ListNodes(context.Context, *vigilv1.ListNodesRequest) (*vigilv1.ListNodesResponse, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &vigilv1.ListNodesResponse{Nodes: f.nodes}, nil
}

func (f *fakeVigil) ListContainers(_ context.Context, req *vigilv1.ListContainersRequest) (*vigilv1.ListContainersResponse, error) {
	f.mu.Lock()
	f.lastList = req
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	var out []*vigilv1.NodeContainer
	for _, nc := range f.containers {
		if req.GetNode() != "" && nc.GetNode() != req.GetNode() {
			continue
		}
		if nc.GetContainer().GetPod().GetSandbox() && !req.GetIncludeSandboxes() {
			continue
		}
		out = append(out, nc)
	}
	return &vigilv1.ListContainersResponse{Containers: out}, nil
}

func (f *fakeVigil) ListRemediations(_ context.Context, req *vigilv1.ListRemediationsRequest) (*vigilv1.ListRemediationsResponse, error) {
	f.mu.Lock()
	f.listRemediationsCalls++
	n := f.listRemediationsCalls
	f.mu.Unlock()
	if f.listRemediations != nil {
		return f.listRemediations(n, req)
	}
	if f.err != nil {
		return nil, f.err
	}
	return &vigilv1.ListRemediationsResponse{Remediations: f.remediations}, nil
}

func (f *fakeVigil) RequestRemediation(_ context.Context, req *vigilv1.RequestRemediationRequest) (*vigilv1.RequestRemediationResponse, error) {
	return &vigilv1.RequestRemediationResponse{Remediation: f.requested}, nil
}

func (f *fakeVigil) WatchEvents(req *vigilv1.WatchEventsRequest, stream vigilv1.Vigil_WatchEventsServer) error {
	f.mu.Lock()
	f.lastWatch = req
	f.watches++
	n := f.watches
	f.mu.Unlock()
	if f.watch != nil {
		return f.watch(n, req, stream)
	}
	if f.err != nil {
		return f.err
	}
	// As the aggregator does: the header says the subscription is in place.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for _, ev := range f.events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

const sha = "3f1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a"

func fixture() *fakeVigil {
	return &fakeVigil{
		nodes: []*vigilv1.Node{
			{Name: "node-a", AgentVersion: "v0.3.0", BootId: "b1", RuntimeVersion: "1.6.20", RuntimeAvailable: true,
				State: vigilv1.NodeState_NODE_STATE_UP, LastSeen: ts(2 * time.Second), ConnectedSince: ts(26 * time.Hour),
				ContainerCount: 12, Capabilities: []string{"health", "restart"},
				AgentStatus: &vigilv1.AgentStatus{CpuSeconds: 12.34, RssBytes: 40 << 20, BufferedMessages: 3, BufferCapacity: 10000, ReconnectsTotal: 2},
				PeerView: &vigilv1.PeerView{Observer: "node-a", Peers: []*vigilv1.PeerStatus{
					{Name: "node-b", State: vigilv1.PeerState_PEER_STATE_ALIVE}, {Name: "node-c", State: vigilv1.PeerState_PEER_STATE_SUSPECT}}}},
			{Name: "node-b", AgentVersion: "v0.3.0", State: vigilv1.NodeState_NODE_STATE_DOWN,
				LastSeen: ts(7*time.Minute + 30*time.Second), ConnectedSince: ts(3 * time.Hour), ContainerCount: 4},
			{Name: "node-c", State: vigilv1.NodeState_NODE_STATE_STALE, LastSeen: ts(90 * time.Second),
				ConnectedSince: ts(9 * 24 * time.Hour), RuntimeAvailable: true, RuntimeVersion: "1.7.0"},
		},
		containers: []*vigilv1.NodeContainer{
			{Node: "node-a", Container: &vigilv1.Container{Id: "web", Namespace: "default", Image: "docker.io/library/nginx:1.27",
				State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Pid: 4242, CreatedAt: ts(3 * time.Hour),
				Manager: vigilv1.Manager_MANAGER_VIGIL, RestartCount: 2,
				RestartPolicy: &vigilv1.RestartPolicy{Kind: vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_ALWAYS, RestartOnUnhealthy: true},
				Health:        &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY},
				LastExit:      &vigilv1.ExitStatus{Code: 3, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, ExitedAt: ts(2 * time.Minute)}}},
			{Node: "node-a", Container: &vigilv1.Container{Id: "worker", Namespace: "default", Image: "registry.local/worker:2",
				State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED, CreatedAt: ts(50 * time.Minute),
				Manager: vigilv1.Manager_MANAGER_VIGIL, RestartCount: 7,
				RestartPolicy: &vigilv1.RestartPolicy{Kind: vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_ON_FAILURE, MaxRetries: 10},
				Health:        &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_NONE},
				LastExit:      &vigilv1.ExitStatus{Code: 137, Reason: vigilv1.ExitReason_EXIT_REASON_SIGNAL, Signal: "KILL", ExitedAt: ts(15 * time.Second)},
				Backoff:       &vigilv1.BackoffState{CrashLooping: true, CurrentDelay: durationpb.New(80 * time.Second), NextRestartAt: timestamppb.New(now.Add(40 * time.Second))}}},
			{Node: "node-a", Container: &vigilv1.Container{Id: "batch", Namespace: "jobs", Image: "registry.local/batch:1",
				State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED, ExplicitlyStopped: true, CreatedAt: ts(5 * 24 * time.Hour),
				Manager:       vigilv1.Manager_MANAGER_VIGIL,
				RestartPolicy: &vigilv1.RestartPolicy{Kind: vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_ON_FAILURE, MaxRetries: 3},
				LastExit:      &vigilv1.ExitStatus{Code: 1, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR, ExitedAt: ts(4 * time.Hour)},
				Backoff:       &vigilv1.BackoffState{GaveUp: true}}},
			{Node: "node-b", Container: &vigilv1.Container{Id: sha, Namespace: "k8s.io", Image: "registry.k8s.io/coredns/coredns:v1.11.1",
				State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Pid: 777, CreatedAt: ts(26 * time.Hour),
				Manager: vigilv1.Manager_MANAGER_KUBELET, RestartCount: 1,
				Pod:    &vigilv1.PodIdentity{Namespace: "kube-system", Name: "coredns-5d78c9869d-x7k2p", ContainerName: "coredns", KubeletRestartCount: 1},
				Health: &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, FailingStreak: 3},
				LastExit: &vigilv1.ExitStatus{Code: 137, Reason: vigilv1.ExitReason_EXIT_REASON_OOM_KILLED, Signal: "KILL",
					ExitedAt: ts(26*time.Hour - time.Minute)}}},
			{Node: "node-b", Container: &vigilv1.Container{Id: strings.Repeat("ab", 32), Namespace: "k8s.io", Image: "registry.k8s.io/pause:3.9",
				State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, CreatedAt: ts(26 * time.Hour), Manager: vigilv1.Manager_MANAGER_KUBELET,
				Pod: &vigilv1.PodIdentity{Namespace: "kube-system", Name: "coredns-5d78c9869d-x7k2p", Sandbox: true}}},
		},
		events: []*vigilv1.WatchEventsResponse{
			{Node: "node-a", Event: &vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, Time: ts(15 * time.Second),
				Container: &vigilv1.Container{Id: "worker", Namespace: "default"},
				Exit:      &vigilv1.ExitStatus{Code: 137, Reason: vigilv1.ExitReason_EXIT_REASON_SIGNAL, Signal: "KILL"}}},
			{Node: "node-a", Event: &vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTART_DECISION, Time: ts(14 * time.Second),
				Container: &vigilv1.Container{Id: "worker", Namespace: "default"},
				Decision:  &vigilv1.RestartDecision{Kind: vigilv1.RestartDecisionKind_RESTART_DECISION_KIND_BACKOFF, Delay: durationpb.New(80 * time.Second), Reason: "on-failure:10, 7 restarts"},
				Message:   "on-failure:10, 7 restarts"}}, // the agent repeats the reason as the message
			{Node: "node-b", Event: &vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED, Time: ts(3 * time.Second),
				Container: &vigilv1.Container{Id: sha, Namespace: "k8s.io", Health: &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY},
					Pod: &vigilv1.PodIdentity{Namespace: "kube-system", Name: "coredns-5d78c9869d-x7k2p", ContainerName: "coredns"}},
				Message: "probe failed:\thttp 503\nafter 3 tries"}},
		},
	}
}

// serve starts f on a loopback port and returns its address.
func serve(t *testing.T, f *fakeVigil, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	vigilv1.RegisterVigilServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// syncBuffer is a bytes.Buffer safe to read while run writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func noEnv(string) string { return "" }

func runTest(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	var out, errw syncBuffer
	err = runAt(ctx, args, &out, &errw, func() time.Time { return now }, noEnv)
	return out.String(), errw.String(), err
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestListings(t *testing.T) {
	addr := serve(t, fixture())
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"nodes", []string{"nodes"}},
		{"nodes-wide", []string{"nodes", "-o", "wide"}},
		{"nodes-json", []string{"-o", "json", "nodes"}},
		{"containers", []string{"containers"}},
		{"containers-all-wide", []string{"containers", "--all", "-o", "wide"}},
		{"containers-unhealthy", []string{"containers", "--unhealthy"}},
		{"containers-node-b-json", []string{"containers", "--node", "node-b", "-o", "json"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			args := append([]string{"--server", addr, "--insecure"}, tc.args...)
			out, errOut, err := runTest(context.Background(), args...)
			if err != nil {
				t.Fatalf("run %v: %v (stderr %q)", tc.args, err, errOut)
			}
			golden(t, tc.golden, out)
		})
	}
}

// TestBackoffText: the BACKOFF column tells time left before a pending
// restart from the delay a running crash-looper's next failure waits (the
// user found both printed as "crash-looping 16s").
func TestBackoffText(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	p := &printer{now: now}
	in := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(d)) }
	for _, tc := range []struct {
		b    *vigilv1.BackoffState
		want string
	}{
		{nil, "-"},
		{&vigilv1.BackoffState{CurrentDelay: durationpb.New(2 * time.Second)}, "-"},
		{&vigilv1.BackoffState{NextRestartAt: in(10 * time.Second)}, "restart in 10s"},
		{&vigilv1.BackoffState{NextRestartAt: in(14 * time.Second), CrashLooping: true, CurrentDelay: durationpb.New(16 * time.Second)}, "crash-looping, restart in 14s"},
		{&vigilv1.BackoffState{NextRestartAt: in(-time.Second), CrashLooping: true, CurrentDelay: durationpb.New(16 * time.Second)}, "crash-looping (backoff 16s)"},
		{&vigilv1.BackoffState{CrashLooping: true}, "crash-looping"},
		{&vigilv1.BackoffState{GaveUp: true, CrashLooping: true}, "gave up"},
	} {
		if got := p.backoff(tc.b); got != tc.want {
			t.Errorf("backoff(%v) = %q, want %q", tc.b, got, tc.want)
		}
	}
}

// TestLabelErrorsWarned: a container whose labels the agent could not use
// is named on stderr after the table, with each reason (control characters
// of the reason made harmless); stdout keeps only the table.
func TestLabelErrorsWarned(t *testing.T) {
	var out, errw bytes.Buffer
	p := &printer{w: &out, errw: &errw, format: "table", now: time.Now()}
	resp := &vigilv1.ListContainersResponse{Containers: []*vigilv1.NodeContainer{
		{Node: "node-a", Container: &vigilv1.Container{Id: "web", Namespace: "default",
			LabelErrors: []string{"health check labels rejected; container is not probed: vigil.io/health-interval=\"banana\"\x1b[31m"}}},
		{Node: "node-a", Container: &vigilv1.Container{Id: "fine", Namespace: "default"}},
	}}
	if err := p.containers(resp); err != nil {
		t.Fatal(err)
	}
	want := `vigilctl: warning: node-a/default/web: health check labels rejected; container is not probed: vigil.io/health-interval="banana" [31m` + "\n"
	if errw.String() != want {
		t.Errorf("stderr:\n%q\nwant\n%q", errw.String(), want)
	}
	if strings.Contains(out.String(), "rejected") {
		t.Errorf("the warning is on stdout:\n%s", out.String())
	}
}

func TestHealthText(t *testing.T) {
	for _, tc := range []struct {
		h    *vigilv1.Health
		want string
	}{
		{nil, "-"},
		{&vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY}, "unhealthy"},
		{&vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY, Blame: vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK}, "unhealthy(node network)"},
		{&vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY, Blame: vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK}, "healthy"},
	} {
		if got := health(tc.h); got != tc.want {
			t.Errorf("health(%v) = %q, want %q", tc.h, got, tc.want)
		}
	}
}

func TestContainerFiltersReachTheServer(t *testing.T) {
	f := fixture()
	addr := serve(t, f)
	_, _, err := runTest(context.Background(), "containers", "--server", addr, "--insecure",
		"--node", "node-b", "--namespace", "k8s.io", "--pod", "coredns-5d78c9869d-x7k2p", "--all")
	if err != nil {
		t.Fatal(err)
	}
	want := &vigilv1.ListContainersRequest{Node: "node-b", Namespace: "k8s.io", Pod: "coredns-5d78c9869d-x7k2p", IncludeSandboxes: true, PageSize: pageSize}
	if !proto.Equal(f.lastList, want) {
		t.Errorf("request = %v, want %v", f.lastList, want)
	}
}

// TestNoResults: every listing with nothing to list does the same: a
// table prints "No ... found." on stderr and nothing on stdout; JSON
// prints the empty answer, {}. events, which follows, says on stderr that
// it watches.
func TestNoResults(t *testing.T) {
	addr := serve(t, &fakeVigil{})
	for _, what := range []string{"nodes", "containers", "remediations"} {
		for _, format := range []string{"table", "wide"} {
			out, errOut, err := runTest(context.Background(), "--server", addr, "--insecure", "-o", format, what, "--node=nope")
			if what == "nodes" {
				out, errOut, err = runTest(context.Background(), "--server", addr, "--insecure", "-o", format, what)
			}
			if err != nil || out != "" || !strings.HasSuffix(errOut, "\nNo "+what+" found.\n") || !strings.HasPrefix(errOut, "vigilctl: warning: connecting to "+addr+" without TLS") {
				t.Errorf("%s -o %s on an empty fleet: out %q, stderr %q, err %v", what, format, out, errOut, err)
			}
		}
		out, _, err := runTest(context.Background(), "--server", addr, "--insecure", "-o", "json", what)
		if err != nil || out != "{}\n" {
			t.Errorf("%s -o json on an empty fleet: %q, %v", what, out, err)
		}
	}
	for _, tc := range []struct{ since, want string }{{"0s", "Watching for events (Ctrl-C to stop).\n"}, {"1h", "Watching for events, from 1h0m0s ago (Ctrl-C to stop).\n"}} {
		out, errw, done, cancel := runEvents(t, "--server", addr, "--insecure", "events", "--node", "nope", "--since", tc.since)
		waitUntil(t, 30*time.Second, "events said it watches", func() bool { return strings.HasSuffix(errw.String(), tc.want) }, errw.String)
		cancel()
		if err := <-done; err != nil || out.String() != "" {
			t.Errorf("events --since %s: %v, stdout %q", tc.since, err, out.String())
		}
	}
	_, errw, done, cancel := runEvents(t, "--server", addr, "--insecure", "-o", "json", "events")
	defer cancel()
	waitUntil(t, 30*time.Second, "events -o json subscribed", func() bool {
		return strings.Contains(errw.String(), "warning: connecting")
	}, errw.String)
	cancel()
	if err := <-done; err != nil || strings.Contains(errw.String(), "Watching") {
		t.Errorf("events -o json: %v; stderr %q, want no note", err, errw.String())
	}
}

// runEvents runs vigilctl with args (a following command: events) on its
// own goroutine until cancel; done has what it returned.
func runEvents(t *testing.T, args ...string) (out, errw *syncBuffer, done <-chan error, cancel context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out, errw = &syncBuffer{}, &syncBuffer{}
	d := make(chan error, 1)
	go func() { d <- runAt(ctx, args, out, errw, func() time.Time { return now }, noEnv) }()
	return out, errw, d, cancel
}

func TestEvents(t *testing.T) {
	for _, tc := range []struct{ golden, format string }{{"events", "table"}, {"events-json", "json"}} {
		t.Run(tc.golden, func(t *testing.T) {
			f := fixture()
			addr := serve(t, f)
			out, errw, done, cancel := runEvents(t, "--server", addr, "--insecure", "-o", tc.format, "events", "--node", "node-a")
			defer cancel()
			deadline := time.Now().Add(30 * time.Second)
			for strings.Count(out.String(), "\n") < len(f.events) {
				if time.Now().After(deadline) {
					t.Fatalf("events so far:\n%s\nstderr: %s", out.String(), errw.String())
				}
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond)
			cancel() // the operator's ^C
			if err := <-done; err != nil {
				t.Fatalf("events after interrupt: %v, want nil", err)
			}
			if f.lastWatch.GetNode() != "node-a" {
				t.Errorf("watch request %v, want node node-a", f.lastWatch)
			}
			golden(t, tc.golden, out.String())
		})
	}
}

func TestEventStreamEndedByServerIsAnError(t *testing.T) {
	addr := serve(t, &fakeVigil{err: status.Error(codes.ResourceExhausted, "subscriber fell 256 events behind")})
	_, _, err := runTest(context.Background(), "--server", addr, "--insecure", "events")
	if err == nil || !strings.Contains(err.Error(), "fell 256 events behind") {
		t.Errorf("events = %v, want the server's reason", err)
	}
}

func TestUnreachableAggregator(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	for _, cmd := range []string{"nodes", "containers", "events"} {
		_, _, err := runTest(context.Background(), "--server", addr, "--insecure", cmd)
		if err == nil || !strings.HasPrefix(err.Error(), "cannot reach aggregator at "+addr+": ") || !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("%s against a closed port: %v, want \"cannot reach aggregator at %s: ...\"", cmd, err, addr)
		}
	}
}

func TestServerErrorsKeepTheirMeaning(t *testing.T) {
	addr := serve(t, &fakeVigil{err: status.Error(codes.InvalidArgument, `unknown health "sick"`)})
	_, _, err := runTest(context.Background(), "--server", addr, "--insecure", "containers")
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), `list containers: unknown health "sick"`) {
		t.Errorf("err = %v, want the server's InvalidArgument as ErrInvalid", err)
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, _, serverTLS := testServerTLS(t, dir, "aggregator")
	cf, err := ca.WriteIdentity(dir, "operator", pki.Identity{Role: pki.RoleOperator, Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, fixture(), grpc.Creds(credentials.NewTLS(serverTLS)))

	out, _, err := runTest(context.Background(), "--server", addr, "--tls-cert", cf.Cert, "--tls-key", cf.Key, "--tls-ca", cf.CA, "nodes")
	if err != nil || !strings.HasPrefix(out, "NAME") {
		t.Fatalf("nodes over mTLS: %q, %v", out, err)
	}
	// The same through the environment.
	env := map[string]string{"VIGIL_SERVER": addr, "VIGIL_TLS_CERT": cf.Cert, "VIGIL_TLS_KEY": cf.Key, "VIGIL_TLS_CA": cf.CA}
	var stdout, stderr bytes.Buffer
	if err := runAt(context.Background(), []string{"nodes"}, &stdout, &stderr, func() time.Time { return now },
		func(k string) string { return env[k] }); err != nil || !strings.HasPrefix(stdout.String(), "NAME") {
		t.Fatalf("nodes with VIGIL_* environment: %q, %v", stdout.String(), err)
	}
	// Without TLS against the mTLS server: a clear failure, not a hang.
	_, _, err = runTest(context.Background(), "--server", addr, "--insecure", "--timeout", "5s", "nodes")
	if err == nil || !strings.Contains(err.Error(), "cannot reach aggregator at "+addr) {
		t.Errorf("plaintext against mTLS: %v", err)
	}
}

func TestBadCommandLines(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"--insecure", "pods"}, `unknown command "pods"`},
		{[]string{"--insecure", "-o", "yaml", "nodes"}, `-o "yaml": want table, wide or json`},
		{[]string{"nodes"}, "no transport security"},
		{[]string{"--insecure", "--tls-ca", "ca.crt", "nodes"}, "choose one"},
		{[]string{"--insecure", "containers", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"--insecure", "nodes", "extra"}, `unexpected arguments ["extra"]`},
		{[]string{"--insecure", "--timeout", "0s", "nodes"}, "want a positive duration"},
		{[]string{"--insecure", "--server", "", "nodes"}, "--server is empty"},
		{[]string{"--tls-cert", "/nonexistent.crt", "--tls-key", "k", "--tls-ca", "c", "nodes"}, "no certificate at /nonexistent.crt"},
		{[]string{"--insecure", "nodes", "release"}, "nodes release: want one node name"},
		{[]string{"--insecure", "nodes", "release", "a", "b"}, "nodes release: want one node name"},
	} {
		_, _, err := runTest(context.Background(), tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("vigilctl %q: %v, want an ErrInvalid saying %q", tc.args, err, tc.want)
		}
	}
	if _, _, err := runTest(context.Background(), "-h"); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
	if _, err := parseArgs([]string{"nodes"}, func(k string) string {
		return map[string]string{"VIGIL_INSECURE": "maybe"}[k]
	}); err == nil || !strings.Contains(err.Error(), "VIGIL_INSECURE") {
		t.Errorf("VIGIL_INSECURE=maybe: %v", err)
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                    "0s",
		0:                               "0s",
		40 * time.Second:                "40s",
		119 * time.Second:               "119s",
		2 * time.Minute:                 "2m",
		3*time.Minute + 20*time.Second:  "3m20s",
		45 * time.Minute:                "45m",
		5*time.Hour + 10*time.Minute:    "5h10m",
		5 * time.Hour:                   "5h",
		30 * time.Hour:                  "30h",
		6*24*time.Hour + 4*time.Hour:    "6d4h",
		40 * 24 * time.Hour:             "40d",
		3 * 365 * 24 * time.Hour:        "3y",
		1500 * time.Millisecond:         "2s",
		9*time.Minute + 59*time.Second:  "9m59s",
		10*time.Minute + 30*time.Second: "10m",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%s) = %q, want %q", d, got, want)
		}
	}
}
