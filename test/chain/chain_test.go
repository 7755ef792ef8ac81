package chain

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	goruntime "runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRenderPrometheusConfig(t *testing.T) {
	tmpl, err := os.ReadFile("../../deploy/demo/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := RenderPrometheusConfig(string(tmpl), "127.0.0.1:40001", "127.0.0.1:40002", "/opt/rules")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"'127.0.0.1:40001'", "'127.0.0.1:40002'", "/opt/rules/*rules.yml"} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered config lacks %q:\n%s", want, out)
		}
	}
	for _, gone := range []string{demoAggregatorHTTP, demoAgentMetrics, "../prometheus/"} {
		if strings.Contains(out, gone) {
			t.Errorf("rendered config still has %q", gone)
		}
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		path := filepath.Join(t.TempDir(), "prometheus.yml")
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command(promtool, "check", "config", path).CombinedOutput(); err != nil {
			t.Errorf("promtool check config: %v\n%s", err, b)
		}
	}
	if _, err := RenderPrometheusConfig("scrape_configs: []\n", "a:1", "b:2", ""); err == nil {
		t.Error("a config without the demo target rendered without error")
	}
}

func TestParseQueryResponse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		body    string
		want    []Sample
		wantErr string
	}{
		{
			name: "vector",
			body: `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"container":"web"},"value":[1700000000.1,"3"]}]}}`,
			want: []Sample{{Labels: map[string]string{"container": "web"}, Value: 3}},
		},
		{name: "empty", body: `{"status":"success","data":{"resultType":"vector","result":[]}}`, want: []Sample{}},
		{name: "error", body: `{"status":"error","errorType":"bad_data","error":"parse error"}`, wantErr: "bad_data: parse error"},
		{name: "scalar", body: `{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}`, wantErr: "result type"},
		{name: "not json", body: `<html>`, wantErr: "decode"},
		{name: "bad value", body: `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}`, wantErr: "sample value"},
		{name: "short value", body: `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}`, wantErr: "want [time, value]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseQueryResponse("q", []byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// FuzzParseQueryResponse: Prometheus's answers are outside input; whatever
// they hold, parsing returns samples or an error, never panics.
func FuzzParseQueryResponse(f *testing.F) {
	f.Add([]byte(`{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"b"},"value":[1,"2"]}]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		samples, err := parseQueryResponse("q", body)
		if err != nil && samples != nil {
			t.Fatalf("samples %v with error %v", samples, err)
		}
	})
}

func TestCtrArgs(t *testing.T) {
	c := Container{
		ID:           "web",
		Image:        WorkloadRef,
		Args:         []string{"/workload", "serve"},
		Labels:       map[string]string{"vigil.io/restart-policy": "always", "vigil.io/health-http": "http://:8080/healthz"},
		NetNSPath:    "/var/run/netns/x",
		LogPath:      "/d/web.log",
		CgroupParent: "/vigil-demo",
	}
	got := strings.Join(c.CtrArgs("/s.sock"), " ")
	want := "-a /s.sock -n default run -d --label vigil.io/health-http=http://:8080/healthz --label vigil.io/restart-policy=always" +
		" --with-ns network:/var/run/netns/x --log-uri file:///d/web.log --cgroup /vigil-demo/web docker.io/vigil/workload:test web /workload serve"
	if got != want {
		t.Errorf("ctr args:\n got %s\nwant %s", got, want)
	}
	c = Container{ID: "x", Namespace: "n", Image: "i"}
	if got := strings.Join(c.CtrArgs("/s"), " "); got != "-a /s -n n run -d --null-io i x" {
		t.Errorf("minimal ctr args: %s", got)
	}
}

func TestStories(t *testing.T) {
	s := Stories(StoryOptions{NetNSPath: "/ns", LogDir: "/logs", CrashAfter: 2 * time.Second, CrashRestarts: 4, UnhealthyAfter: 5 * time.Second, HealthInterval: time.Second})
	byID := map[string]Container{}
	for _, c := range s {
		byID[c.ID] = c
	}
	if p := byID[CrashLoopID].Labels["vigil.io/restart-policy"]; p != "on-failure:4" {
		t.Errorf("crashloop policy %q, want on-failure:4", p)
	}
	if got := strings.Join(byID[CrashLoopID].Args, " "); got != "/workload exit 1 --after 2s" {
		t.Errorf("crashloop args %q", got)
	}
	if l := byID[FlakyID].Labels; l["vigil.io/restart-on-unhealthy"] != "true" || l["vigil.io/health-http"] != "http://:8081/healthz" {
		t.Errorf("flaky labels %v", l)
	}
	if l := byID[WebID].Labels; l["vigil.io/health-start-period"] != "5s" {
		t.Errorf("web start period %q, want five 1s intervals", l["vigil.io/health-start-period"])
	}
	if byID[WebID].Labels["vigil.io/health-http"] != "http://:8080/healthz" || byID[WebID].LogPath != "/logs/web.log" {
		t.Errorf("web %+v", byID[WebID])
	}
	if p := Stories(StoryOptions{})[1].Labels["vigil.io/restart-policy"]; p != "on-failure" {
		t.Errorf("unbounded crashloop policy %q", p)
	}
}

// TestProcess runs a real process through start, record, reload, kill and
// stop, as the demo and `demo down` do.
func TestProcess(t *testing.T) {
	dir := t.TempDir()
	p, err := startProcess(dir, "sleeper", "sleep", []string{"60"}, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	if !p.Running() {
		t.Fatal("not running after start")
	}
	if _, err := startProcess(dir, "sleeper", "sleep", []string{"60"}, false); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second start: %v, want already running", err)
	}
	q, ok, err := LoadProcess(dir, "sleeper")
	if err != nil || !ok || q.PID != p.PID || !q.Running() {
		t.Fatalf("LoadProcess = %+v, %v, %v", q, ok, err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if p.Running() {
		t.Fatal("running after Kill")
	}
	if _, err := os.Stat(p.PIDFile); err != nil {
		t.Errorf("Kill removed the pid file: %v", err)
	}
	// A recorded pid that is gone (or recycled by another program) is not
	// running.
	if q.Running() {
		t.Error("reloaded record of a killed process still running")
	}
	if !alive(os.Getpid(), "/proc/self/exe") {
		t.Error("this test binary is not alive by its own exe")
	}
	if alive(os.Getpid(), "/usr/bin/definitely-not-this") {
		t.Error("alive with another binary's name")
	}

	p2, err := startProcess(dir, "sleeper", "sleep", []string{"60"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := StopRecorded(dir); err != nil { // not one of the chain's names: untouched
		t.Fatal(err)
	}
	if !p2.Running() {
		t.Fatal("StopRecorded stopped a process it does not own")
	}
	if err := p2.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p2.PIDFile); !os.IsNotExist(err) {
		t.Errorf("pid file after Stop: %v", err)
	}
	if err := p2.Stop(time.Second); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestProcessOutlivesStartingThread: the parent-death signal is tied to the
// thread that started the child, and a goroutine that ends with its thread
// locked (as testenv's network-namespace helpers do) takes that thread
// along. A child started from such a goroutine must keep running.
func TestProcessOutlivesStartingThread(t *testing.T) {
	dir := t.TempDir()
	var p *Process
	var err error
	onEndingThread(func() { p, err = startProcess(dir, "sleeper", "sleep", []string{"60"}, false) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if !p.Running() {
			t.Fatal("the child died with the thread of the goroutine that started it")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// onEndingThread runs f on an OS thread that ends when f returns: in a
// goroutine that returns with its thread locked. The runtime keeps the main
// thread instead of ending it, so f never runs there: a goroutine that finds
// itself on it holds it while another runs f.
func onEndingThread(f func()) {
	done := make(chan struct{})
	var run func()
	run = func() {
		goruntime.LockOSThread() // not unlocked on the thread that runs f
		if syscall.Gettid() == syscall.Getpid() {
			go run()
			<-done
			goruntime.UnlockOSThread()
			return
		}
		defer close(done)
		f()
	}
	go run()
	<-done
}
