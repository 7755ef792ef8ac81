package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/store/bolt"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// vigilctl against the real aggregator, fed by a real uplink: what an agent
// reports is what the operator reads, and events arrive while watched.
func TestAgainstRealAggregator(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	agg, ctx, spawn := runAggregator(t, aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: quiet})
	addr := agg.GRPCAddr().String()

	web := &vigilv1.Container{Id: "web", Namespace: "default", Image: "busybox:1.36", State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING,
		Manager: vigilv1.Manager_MANAGER_VIGIL, CreatedAt: ts(time.Hour)}
	u, err := uplink.New(uplink.Config{Address: addr, NodeName: "node-a", AgentVersion: "v-test", Logger: quiet},
		func() *vigilv1.Snapshot {
			return &vigilv1.Snapshot{Containers: []*vigilv1.Container{web}, Status: &vigilv1.NodeStatus{RuntimeAvailable: true, RuntimeVersion: "1.6.20"}}
		})
	if err != nil {
		t.Fatal(err)
	}
	spawn(u.Run)

	var out string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out, "web") {
		if time.Now().After(deadline) {
			t.Fatalf("containers never listed web:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
		out, _, err = runTest(ctx, "--server", addr, "--insecure", "containers", "--node", "node-a")
		if err != nil {
			t.Fatal(err)
		}
	}
	if !strings.HasPrefix(out, "NODE ") || !strings.Contains(out, "busybox:1.36") || !strings.Contains(out, "Running") {
		t.Errorf("containers:\n%s", out)
	}
	out, _, err = runTest(ctx, "--server", addr, "--insecure", "nodes")
	if err != nil || !strings.Contains(out, "node-a") || !strings.Contains(out, "Up") || !strings.Contains(out, "v-test") {
		t.Errorf("nodes: %v\n%s", err, out)
	}

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var events, eventsErr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- runAt(watchCtx, []string{"--server", addr, "--insecure", "events"}, &events, &eventsErr, time.Now, noEnv)
	}()
	// The subscription starts asynchronously: send until one is seen.
	for i := 0; !strings.Contains(events.String(), "exited"); i++ {
		if i == 500 {
			t.Fatalf("no event line:\n%s", events.String())
		}
		exited := &vigilv1.Container{Id: "web", Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED}
		if err := u.SendContainerEvent(&vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
			Time: ts(0), Container: exited, Exit: &vigilv1.ExitStatus{Code: 3, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopWatch()
	if err := <-done; err != nil {
		t.Errorf("events: %v", err)
	}
	if line := events.String(); !strings.Contains(line, "node-a") || !strings.Contains(line, "error(3)") {
		t.Errorf("event output:\n%s", line)
	}
	// Once the aggregator had subscribed it, and before any event, it
	// said so.
	if !strings.HasSuffix(eventsErr.String(), "\nWatching for events (Ctrl-C to stop).\n") {
		t.Errorf("events stderr %q, want it to say it watches", eventsErr.String())
	}
}

// vigilctl pages through more containers than one page holds, and leaves
// probe output out of tables.
func TestPagesThroughContainers(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	agg, ctx, spawn := runAggregator(t, aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: quiet, Quotas: aggregator.Quotas{Containers: 3000}})
	addr := agg.GRPCAddr().String()

	const n = 2500 // three pages of 1000
	var containers []*vigilv1.Container
	for i := range n {
		containers = append(containers, &vigilv1.Container{Id: fmt.Sprintf("c%04d", i), Namespace: "default",
			State: vigilv1.ContainerState_CONTAINER_STATE_RUNNING, Manager: vigilv1.Manager_MANAGER_VIGIL,
			Health: &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY,
				LastResults: []*vigilv1.ProbeResult{{Ok: true, Output: strings.Repeat("o", 4000)}}}})
	}
	u, err := uplink.New(uplink.Config{Address: addr, NodeName: "node-a", AgentVersion: "v-test", Logger: quiet, MaxMessageBytes: 16 << 20},
		func() *vigilv1.Snapshot { return &vigilv1.Snapshot{Containers: containers} })
	if err != nil {
		t.Fatal(err)
	}
	spawn(u.Run)
	deadline := time.Now().Add(20 * time.Second)
	for len(agg.Fleet().Containers(&vigilv1.ListContainersRequest{})) < n {
		if time.Now().After(deadline) {
			t.Fatal("the snapshot never arrived")
		}
		time.Sleep(10 * time.Millisecond)
	}
	out, _, err := runTest(ctx, "--server", addr, "--insecure", "containers")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(out, "\n"); lines != n+1 {
		t.Fatalf("containers printed %d lines, want %d and a header", lines, n)
	}
	if !strings.Contains(out, "c0000") || !strings.Contains(out, "c2499") {
		t.Fatalf("first or last container missing")
	}
	// JSON asks for the probe output: about 10 MB in all, more than gRPC's
	// default 4 MiB receive limit for one page.
	out, _, err = runTest(ctx, "--server", addr, "--insecure", "-o", "json", "containers")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(out, strings.Repeat("o", 4000)); got != n {
		t.Fatalf("json output carries %d probe outputs, want %d", got, n)
	}
}

// nodes release against a real aggregator over mutual TLS: an operator
// releases a name, a viewer is refused with the role it lacks.
func TestNodesRelease(t *testing.T) {
	dir := t.TempDir()
	ca, sf, serverTLS := testServerTLS(t, dir, "localhost")
	caCert, caKey, err := ca.WriteCA(dir, "signer")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := pki.LoadCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("bootstrap-token-0123456789 ds\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := pki.OpenBootstrapTokens(tokens)
	if err != nil {
		t.Fatal(err)
	}
	agg, ctx, _ := runAggregator(t, aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", TLS: serverTLS,
		ShutdownTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler),
		Bootstrap: &aggregator.BootstrapConfig{CA: signer, Tokens: tf, BindingsFile: filepath.Join(dir, "bindings.json")}})
	addr := agg.GRPCAddr().String()

	// node-a bootstraps, binding its name to its key.
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("bootstrap-token-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := uplink.NewKeeper(uplink.KeeperConfig{Address: addr, ServerName: "localhost", CAFile: sf.CA, TokenFile: tokenFile,
		Dir: filepath.Join(dir, "node-a"), NodeName: "node-a", RetryInitial: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	kctx, stopK := context.WithCancel(ctx)
	kdone := make(chan error, 1)
	go func() { kdone <- k.Run(kctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for k.Issued() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("node-a did not bootstrap")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopK()
	<-kdone

	as := func(id pki.Identity, args ...string) (string, error) {
		f, err := ca.WriteIdentity(dir, string(id.Role), id)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := runTest(ctx, append([]string{"--server", addr, "--tls-server-name", "localhost", "--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA}, args...)...)
		return out, err
	}
	_, err = as(pki.Identity{Role: pki.RoleViewer, Name: "bob"}, "nodes", "release", "node-a")
	if !errors.Is(err, errdefs.ErrPermission) || !strings.Contains(err.Error(), "needs role operator") {
		t.Fatalf("viewer release: %v, want permission denied naming role operator", err)
	}
	out, err := as(pki.Identity{Role: pki.RoleOperator, Name: "alice"}, "nodes", "release", "node-a")
	if err != nil || !strings.Contains(out, "node node-a released") {
		t.Fatalf("operator release: %q, %v", out, err)
	}
	out, err = as(pki.Identity{Role: pki.RoleOperator, Name: "alice"}, "nodes", "release", "node-a")
	if err != nil || !strings.Contains(out, "was not bound") {
		t.Fatalf("second release: %q, %v", out, err)
	}
}

// testServerTLS makes a CA and, in dir, the aggregator's certificate for
// host: the CA, the server's files and its TLS configuration.
func testServerTLS(t *testing.T, dir, host string) (*pki.CA, pki.Files, *tls.Config) {
	t.Helper()
	ca, err := pki.NewCA("vigil test CA")
	if err != nil {
		t.Fatal(err)
	}
	sf, err := ca.WriteServer(dir, "aggregator", host)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerConfig(sf)
	if err != nil {
		t.Fatal(err)
	}
	return ca, sf, serverTLS
}

// TestConnectionHints: the transport mistakes an operator makes against a
// real aggregator get a hint that names the likely mistake: its HTTP port
// given as --server, --insecure against its TLS port, and TLS against an
// aggregator started with --insecure.
func TestConnectionHints(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	plain, ctx, _ := runAggregator(t, aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: quiet})
	dir := t.TempDir()
	ca, _, serverTLS := testServerTLS(t, dir, "localhost")
	secure, _, _ := runAggregator(t, aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", TLS: serverTLS,
		ShutdownTimeout: 2 * time.Second, Logger: quiet})
	cf, err := ca.WriteIdentity(dir, "viewer", pki.Identity{Role: pki.RoleViewer, Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	mtls := []string{"--tls-server-name", "localhost", "--tls-cert", cf.Cert, "--tls-key", cf.Key, "--tls-ca", cf.CA}
	other, err := pki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	of, err := other.WriteIdentity(t.TempDir(), "mallory", pki.Identity{Role: pki.RoleViewer, Name: "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	foreign := []string{"--tls-server-name", "localhost", "--tls-cert", of.Cert, "--tls-key", of.Key, "--tls-ca", cf.CA}
	for _, tc := range []struct {
		what string
		args []string
		hint string
	}{
		{"the HTTP port", []string{"--insecure", "--server", plain.HTTPAddr().String()},
			"; is this the aggregator's gRPC API port? it answered HTTP/1.1"},
		{"--insecure against TLS", []string{"--insecure", "--server", secure.GRPCAddr().String()},
			"; the server may require TLS: drop --insecure and give --tls-ca"},
		{"TLS against --insecure", append([]string{"--server", plain.GRPCAddr().String()}, mtls...),
			"; the server does not speak TLS: an aggregator started with --insecure needs --insecure"},
		{"a client certificate of a CA the aggregator does not trust", append([]string{"--server", secure.GRPCAddr().String()}, foreign...),
			"; the aggregator may have refused the client certificate --tls-cert"},
	} {
		_, _, err := runTest(ctx, append(tc.args, "--timeout", "20s", "nodes")...)
		if err == nil || !strings.Contains(err.Error(), tc.hint) || !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("%s: %v, want the hint %q", tc.what, err, tc.hint)
		}
		t.Logf("%s: %v", tc.what, err)
	}
	// A certificate out of its validity is refused before anything is sent.
	for _, at := range []time.Time{time.Now().AddDate(50, 0, 0), time.Now().AddDate(-50, 0, 0)} {
		err := certInForce(cf.Cert, at)
		if err == nil || !strings.Contains(err.Error(), cf.Cert) {
			t.Errorf("certificate checked at %s: %v, want an error naming it", at.Format(time.DateOnly), err)
		}
		t.Logf("at %s: %v", at.Format(time.DateOnly), err)
	}
	if err := certInForce(cf.Cert, time.Now()); err != nil {
		t.Errorf("a certificate in force: %v", err)
	}
	// The right transport works, with no hint.
	if out, _, err := runTest(ctx, append([]string{"--server", secure.GRPCAddr().String(), "nodes", "-o", "json"}, mtls...)...); err != nil || out != "{}\n" {
		t.Errorf("nodes over mutual TLS: %q, %v", out, err)
	}
}

// gateWriter blocks every Write until open is closed: a terminal the
// operator stopped reading (scrolled back, paused with ^S).
type gateWriter struct {
	open chan struct{}
	out  syncBuffer
}

func (g *gateWriter) Write(p []byte) (int, error) {
	<-g.open
	return g.out.Write(p)
}

// TestEventsResumeAgainstRealAggregator: `vigilctl events` whose output
// stops being read falls behind a real aggregator (a watch buffer of 4),
// which drops it (ResourceExhausted naming the time to watch again from);
// once its output is read again, it watches again from the aggregator's
// history and prints every event exactly once. Without a store the
// aggregator says the changes in between are lost, and vigilctl ends
// with that.
func TestEventsResumeAgainstRealAggregator(t *testing.T) {
	for _, withStore := range []bool{true, false} {
		t.Run(fmt.Sprintf("store=%v", withStore), func(t *testing.T) { eventsFallingBehind(t, withStore) })
	}
}

func eventsFallingBehind(t *testing.T, withStore bool) {
	quiet := slog.New(slog.DiscardHandler)
	cfg := aggregator.Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true,
		ShutdownTimeout: 2 * time.Second, Logger: quiet, WatchBuffer: 4, HistoryPerNode: 100000}
	if withStore {
		st, err := bolt.Open(filepath.Join(t.TempDir(), "vigil.db"), bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		cfg.Store = st
	}
	agg, ctx, spawn := runAggregator(t, cfg)
	addr := agg.GRPCAddr().String()
	u, err := uplink.New(uplink.Config{Address: addr, NodeName: "node-a", AgentVersion: "v-test", Logger: quiet},
		func() *vigilv1.Snapshot { return &vigilv1.Snapshot{} })
	if err != nil {
		t.Fatal(err)
	}
	spawn(u.Run)
	dropped := func() bool {
		return strings.Contains(scrapeAgg(agg), `vigil_aggregator_watchers_dropped_total{feed="local"} 1`)
	}

	term := &gateWriter{open: make(chan struct{})}
	var stderr syncBuffer
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	done := make(chan error, 1)
	go func() {
		done <- runAt(watchCtx, []string{"--server", addr, "--insecure", "-o", "json", "events"}, term, &stderr, time.Now, noEnv)
	}()
	waitUntil(t, 20*time.Second, "vigilctl subscribed", func() bool {
		return strings.Contains(scrapeAgg(agg), "vigil_aggregator_watchers 1")
	}, nil)

	// Events until the aggregator drops the watcher (its output blocked:
	// gRPC's flow-control window fills, then the buffer of 4), then more.
	base := time.Now().Add(-time.Minute)
	sent := 0
	send := func() {
		t.Helper()
		exited := &vigilv1.Container{Id: "web", Namespace: "default", State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED}
		if err := u.SendContainerEvent(&vigilv1.ContainerEvent{Type: vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED,
			Time: timestamppb.New(base.Add(time.Duration(sent) * time.Millisecond)), Container: exited,
			Message: fmt.Sprintf("e%05d", sent), Exit: &vigilv1.ExitStatus{Code: 3, Reason: vigilv1.ExitReason_EXIT_REASON_ERROR}}); err != nil {
			t.Fatal(err)
		}
		sent++
	}
	deadline := time.Now().Add(60 * time.Second)
	// At most 1,000 a second and 3,000 in all: the history's queue
	// (4,096) and the uplink's buffer (10,000) must not overflow, or the
	// replay would miss events for a reason that is not the one tested.
	for !dropped() {
		if time.Now().After(deadline) || sent >= 3000 {
			t.Fatalf("the aggregator did not drop a watcher that does not read after %d events", sent)
		}
		for range 100 {
			send()
		}
		time.Sleep(100 * time.Millisecond)
	}
	for range 50 {
		send()
	}
	close(term.open) // the operator reads again
	if !withStore {
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "keeps no event history") {
				t.Fatalf("events = %v, want it to end saying the aggregator keeps no history", err)
			}
			t.Logf("vigilctl: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("vigilctl still running 30s after the aggregator without a history dropped it")
		}
		return
	}

	printed := map[string]int{}
	waitUntil(t, 60*time.Second, fmt.Sprintf("all %d events printed", sent), func() bool {
		clear(printed)
		for _, line := range strings.Split(term.out.String(), "\n") {
			if line == "" {
				continue
			}
			var ev struct {
				Event struct{ Message string }
			}
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("not a JSON line: %q: %v", line, err)
			}
			// Only the test's container events: the aggregator's own
			// events of the node (its condition assessed, which a loaded
			// machine may delay into the watch) are printed too.
			if !testEventMessage.MatchString(ev.Event.Message) {
				continue
			}
			printed[ev.Event.Message]++
		}
		return len(printed) == sent
	}, func() string { return fmt.Sprintf("%d distinct printed; stderr:\n%s", len(printed), stderr.String()) })
	for m, n := range printed {
		if n != 1 {
			t.Errorf("event %s printed %d times", m, n)
		}
	}
	if st := u.Stats(); st.Dropped != 0 {
		t.Fatalf("the uplink dropped %d events: the test's premise fails", st.Dropped)
	}
	if text := scrapeAgg(agg); !strings.Contains(text, "vigil_aggregator_event_history_dropped_total 0") {
		t.Fatal("the aggregator's history dropped events: the test's premise fails")
	}
	if !strings.Contains(stderr.String(), "fell behind the aggregator's events and was dropped") {
		t.Errorf("no warning on stderr about falling behind:\n%s", stderr.String())
	}
	t.Logf("%d events, every one printed once; stderr:\n%s", sent, stderr.String())
	stopWatch()
	<-done
}

// testEventMessage matches the messages of eventsFallingBehind's events.
var testEventMessage = regexp.MustCompile(`^e[0-9]{5}$`)

func scrapeAgg(agg *aggregator.Aggregator) string {
	resp, err := http.Get("http://" + agg.HTTPAddr().String() + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// waitUntil waits for cond; failing, it says what, and why() if given.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			if why != nil {
				what += ": " + why()
			}
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runAggregator runs a real aggregator from cfg until the test ends; ctx
// ends then, and the goroutines spawn starts (uplinks) are waited for.
func runAggregator(t *testing.T, cfg aggregator.Config) (agg *aggregator.Aggregator, ctx context.Context, spawn func(func(context.Context) error)) {
	t.Helper()
	agg, err := aggregator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	spawn = func(run func(context.Context) error) {
		wg.Add(1)
		go func() { defer wg.Done(); _ = run(ctx) }()
	}
	spawn(agg.Run)
	return agg, ctx, spawn
}
