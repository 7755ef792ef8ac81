package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
	"github.com/vigilhq/vigil/test/chain"
)

// The demo's fixed names and loopback ports. Tests use ephemeral ports, a
// random bridge subnet (10.200-249.x) and names with a pid, so none collide.
const (
	aggregatorGRPC = "127.0.0.1:17400"
	aggregatorHTTP = "127.0.0.1:17401"
	agentMetrics   = "127.0.0.1:17402"
	prometheusAddr = "127.0.0.1:17490"
	alertmanagerAd = "127.0.0.1:17493"

	nodeName = "demo-node"
	// namespace is the containerd namespace of the demo's containers: its
	// own, so that no test's containers collide with them in runc's state
	// (/run/containerd/runc/NAMESPACE/ID is shared by every containerd).
	namespace    = "vigil-demo"
	netnsName    = "vigil-demo"
	bridgeName   = "vigil-demo0"
	podSubnet    = "10.199.74.0/24"
	cgroupParent = "/vigil-demo"
	// sickNamespace holds the remediation story's container: the shipped
	// remediation rules act on prod-* namespaces.
	sickNamespace = chain.SickNamespacePrefix + "demo"
)

type options struct {
	dir, bin string
	watch    time.Duration
}

type demo struct {
	o          options
	out        io.Writer
	containerd *chain.Containerd
	chain      *chain.Chain
	logDir     string
}

func newDemo(o options, out io.Writer) (*demo, error) {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return nil, err
	}
	o.dir, o.bin = dir, bin
	d := &demo{o: o, out: out, logDir: filepath.Join(dir, "logs")}
	d.containerd = chain.NewContainerd(dir, bridgeName, podSubnet, cgroupParent)
	return d, nil
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "==> "+format+"\n", args...)
}

func (d *demo) newChain() (*chain.Chain, error) {
	return chain.New(chain.Config{
		Dir:               d.o.dir,
		BinDir:            d.o.bin,
		ContainerdAddress: d.containerd.Address,
		NodeName:          nodeName,
		AggregatorGRPC:    aggregatorGRPC,
		AggregatorHTTP:    aggregatorHTTP,
		AgentMetrics:      agentMetrics,
		Prometheus:        prometheusAddr,
		Alertmanager:      alertmanagerAd,
		PrometheusConfig:  "deploy/demo/prometheus.yml",
		RulesDir:          "deploy/prometheus",
		// The shipped route and rules, as a user deploys them.
		AlertmanagerConfig: "deploy/demo/alertmanager.yml",
		RemediationRules:   "deploy/remediation/rules.yaml",
		Interval:           2 * time.Second,
		BackoffInitial:     time.Second,
		BackoffMax:         30 * time.Second,
		BackoffReset:       time.Minute,
		Detach:             true,
	})
}

// up starts the whole chain and the stories, narrates, and leaves it all
// running. A failure part-way leaves what started running, for `down`.
func (d *demo) up(ctx context.Context) error {
	start := time.Now()
	if err := d.preflight(); err != nil {
		return err
	}
	c, err := d.newChain()
	if err != nil {
		return err
	}
	d.chain = c

	d.say("Starting a private containerd (socket %s, state under %s)", d.containerd.Address, d.containerd.Dir)
	if err := d.containerd.Start(ctx); err != nil {
		return err
	}
	d.say("Building the test workload (test/workload, the program inside the demo containers) and importing the demo images without a registry: %s, %s, %s", chain.BusyboxRef, chain.WorkloadRef, chain.PauseRef)
	for _, ns := range []string{namespace, sickNamespace} {
		if err := d.containerd.ImportImages(ctx, ns); err != nil {
			return err
		}
	}
	if err := chain.CreateNetNS(ctx, netnsName); err != nil {
		return err
	}

	d.say("Starting vigil-aggregator: gRPC %s, HTTP %s (INSECURE: no TLS, loopback only; production uses mTLS), its journal in %s, the remediation rules of deploy/remediation/rules.yaml", aggregatorGRPC, aggregatorHTTP, c.AggregatorDataDir())
	if err := c.StartAggregator(ctx); err != nil {
		return err
	}
	d.say("Starting vigil-agent as node %q on that containerd (interval 2s, restart backoff 1s doubling to 30s)", nodeName)
	if err := c.StartAgent(ctx); err != nil {
		return err
	}
	d.say("Starting Alertmanager on http://%s with the shipped route: alerts with a vigil_action label go to the aggregator's webhook after 5s", alertmanagerAd)
	if err := c.StartAlertmanager(ctx); err != nil {
		return err
	}
	d.say("Starting Prometheus on http://%s, scraping the aggregator every 2s, with the shipped rules (deploy/prometheus) and that Alertmanager", prometheusAddr)
	if err := c.StartPrometheus(ctx); err != nil {
		return err
	}

	stories := chain.Stories(chain.StoryOptions{
		Namespace:      namespace,
		NetNSPath:      chain.NetNSPath(netnsName),
		LogDir:         d.logDir,
		CgroupParent:   cgroupParent,
		CrashAfter:     3 * time.Second,
		UnhealthyAfter: 15 * time.Second,
		HealthInterval: 2 * time.Second,
	})
	stories = append(stories, chain.SickStory(chain.StoryOptions{
		Namespace:      sickNamespace,
		NetNSPath:      chain.NetNSPath(netnsName),
		LogDir:         d.logDir,
		CgroupParent:   cgroupParent,
		UnhealthyAfter: 5 * time.Second,
		HealthInterval: 2 * time.Second,
	}))
	d.say("Running the demo containers with ctr, the way you would:")
	for _, s := range stories {
		fmt.Fprintf(d.out, "    %s\n", shellQuote(append([]string{"ctr"}, s.CtrArgs(d.containerd.Address)...)))
		if err := chain.RunContainer(ctx, d.containerd.Address, s); err != nil {
			return err
		}
	}
	fmt.Fprintln(d.out, `
    web        serves HTTP; health-http probes /healthz inside its network namespace: stays healthy
    crashloop  exits 1 after 3s; restart-policy on-failure restarts it, each time after a longer backoff
    flaky      turns its /healthz to 503 after 15s; 3 failed probes make it unhealthy and
               restart-on-unhealthy restarts it (healthy again for 15s, and so on)
    sick       (namespace `+sickNamespace+`) turns unhealthy once after 5s, and its own policy does not
               restart it (restart-on-unhealthy=false). The shipped alert VigilContainerUnhealthy fires
               after 1m, Alertmanager posts it to the aggregator, the journal decides (rule
               restart-unhealthy), the agent restarts it: about a minute and a half`)
	pod := chain.StoryPod(d.logDir, cgroupParent)
	d.say("Running a Kubernetes-style pod %s/%s through CRI (the kubelet's labels; Vigil observes it, the kubelet would own its restarts). "+
		"Its CNI network is a bridge with no gateway (this demo keeps all traffic on the machine), so the pod has no default route: "+
		"Vigil reports it, and the shipped alert VigilContainerNetworkCondition (NoDefaultRoute) fires for it, as it would for a real pod that cannot leave its node", pod.Namespace, pod.Name)
	if _, err := testenv.RunPod(ctx, d.containerd.Address, pod); err != nil {
		return err
	}
	d.say("Everything is up after %s. Watching for %s, and until the remediation is done (Ctrl-C stops watching, not the demo):", time.Since(start).Round(time.Second), d.o.watch)
	d.watch(ctx, d.o.watch)
	d.redeliver(ctx)
	d.where()
	return nil
}

// preflight refuses to start over a running demo or on taken ports, and
// checks the binaries are built.
func (d *demo) preflight() error {
	for _, name := range []string{chain.NameContainerd, chain.NameAggregator, chain.NameAgent, chain.NamePrometheus, chain.NameAlertmanager} {
		if p, ok, _ := chain.LoadProcess(d.o.dir, name); ok && p.Running() {
			return fmt.Errorf("a demo is already running (%s, pid %d): `make demo-down` first, or look at it with `bash scripts/demo.sh status`", name, p.PID)
		}
	}
	for _, p := range []struct{ addr, what string }{
		{aggregatorGRPC, "aggregator gRPC"}, {aggregatorHTTP, "aggregator HTTP"},
		{agentMetrics, "agent metrics"}, {prometheusAddr, "Prometheus"}, {alertmanagerAd, "Alertmanager"},
	} {
		if err := chain.CheckFree(p.addr, p.what); err != nil {
			return err
		}
	}
	for _, b := range []string{"vigil-agent", "vigil-aggregator", "vigilctl"} {
		if _, err := os.Stat(filepath.Join(d.o.bin, b)); err != nil {
			return fmt.Errorf("%s not built: run `make build` (or `make demo`, which builds first): %w", b, err)
		}
	}
	for _, tool := range []string{"containerd", "ctr", "prometheus", chain.AlertmanagerBinary, "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: run `make prereqs` (scripts/install-prereqs.sh)", tool)
		}
	}
	return os.MkdirAll(d.o.dir, 0o755)
}

// watch prints, every 10 s, the containers as vigilctl shows them and the
// stories as Prometheus has them.
func (d *demo) watch(ctx context.Context, total time.Duration) {
	start := time.Now()
	decisions := &logFollower{path: filepath.Join(d.logDir, chain.NameAgent+".log")}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(d.out)
			return
		case <-tick.C:
		}
		fmt.Fprintf(d.out, "\n---- t+%s ---- what the agent did:\n", time.Since(start).Round(time.Second))
		for _, line := range decisions.next() {
			fmt.Fprintln(d.out, "     "+line)
		}
		fmt.Fprintf(d.out, "     $ bin/vigilctl --server %s --insecure containers\n", aggregatorGRPC)
		if out, err := d.chain.Vigilctl(ctx, "containers"); err != nil {
			fmt.Fprintf(d.out, "(vigilctl: %v)\n", err)
		} else {
			d.out.Write(out)
		}
		fmt.Fprintln(d.out, "     as Prometheus sees them:")
		d.promTable(ctx)
		done := d.remediationStatus(ctx)
		// Past the watch time, go on until the remediation has ended, for
		// at most three more minutes.
		if el := time.Since(start); el >= total && (done || el >= total+3*time.Minute) {
			return
		}
	}
}

// promTable prints health, restarts, backoff and exits of the story
// containers from Prometheus.
func (d *demo) promTable(ctx context.Context) {
	sel := `{container=~"web|crashloop|flaky|nginx|sick"}`
	query := func(q string) map[string]string {
		res, err := d.chain.Query(ctx, q)
		if err != nil {
			fmt.Fprintf(d.out, "     (%v)\n", err)
			return nil
		}
		m := map[string]string{}
		for _, s := range res {
			if st, ok := s.Labels["status"]; ok {
				m[s.Labels["container"]] = st
			} else {
				m[s.Labels["container"]] = strings.TrimSuffix(fmt.Sprintf("%g", s.Value), ".0")
			}
		}
		return m
	}
	health := query(`vigil_container_health_status` + sel + ` == 1`)
	restarts := query(`vigil_container_restarts_total` + sel)
	backoff := query(`vigil_container_restart_backoff_seconds` + sel)
	exits := query(`sum by (container) (vigil_container_exits_total` + sel + `)`)
	running := query(`vigil_container_running` + sel)
	probeFailures := query(`vigil_container_health_probe_failures_total` + sel)
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "     CONTAINER\tRUNNING\tHEALTH\tFAILED PROBES\tRESTARTS\tBACKOFF(s)\tEXITS")
	names := []string{"web", "crashloop", "flaky", "nginx", "sick"}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(tw, "     %s\t%s\t%s\t%s\t%s\t%s\t%s\n", n, dash(running[n]), dash(health[n]), dash(probeFailures[n]), dash(restarts[n]), dash(backoff[n]), dash(exits[n]))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// where prints what to look at next.
func (d *demo) where() {
	q := func(s string) string {
		return "http://" + prometheusAddr + "/graph?g0.expr=" + urlQuery(s) + "&g0.tab=0"
	}
	fmt.Fprintf(d.out, `
==> The demo keeps running. Where to look:

  Prometheus   http://%[1]s   (ready queries; the links open them in a browser)
    vigil_container_restarts_total                          %[2]s
    rate(vigil_container_restarts_total[1m])
    sum by (reason) (vigil_container_exits_total)           %[3]s
    vigil_container_restart_backoff_seconds                 (the crash-looper's delay, doubling to 30s)
    vigil_container_health_status{status="unhealthy"} == 1  (now; the flaky one is unhealthy only until its restart)
    max_over_time(vigil_container_health_status{status="unhealthy"}[5m]) == 1
                                                            %[4]s
    increase(vigil_container_health_probe_failures_total[5m])
    vigil_container_memory_working_set_bytes
  vigilctl     bin/vigilctl --server %[5]s --insecure containers
               bin/vigilctl --server %[5]s --insecure containers --unhealthy
               bin/vigilctl --server %[5]s --insecure nodes
               bin/vigilctl --server %[5]s --insecure events     (follows; Ctrl-C to stop)
               bin/vigilctl --server %[5]s --insecure containers -o json
  JSON API     curl -s http://%[6]s/api/v1/containers
  metrics      curl -s http://%[6]s/metrics | grep '^vigil_container'
  containers   ctr -a %[7]s -n %[9]s tasks ls
  remediation  bin/vigilctl --server %[5]s --insecure remediations    (the journal; -o wide adds the fence)
               bin/vigilctl --server %[5]s --insecure restart %[10]s/%[11]s/web --reason "try it"
               http://%[12]s   (Alertmanager: the alerts and where they went)
               ALERTS{alertstate="firing"}                   (in Prometheus)
  logs         %[8]s/{agent,aggregator,prometheus,alertmanager,containerd}.log
               %[8]s/{web,crashloop,flaky,sick}.log (the containers' output)
  status       bash scripts/demo.sh status
  stop         make demo-down   (removes everything the demo started)
`, prometheusAddr, q("vigil_container_restarts_total"), q("sum by (reason) (vigil_container_exits_total)"),
		q(`max_over_time(vigil_container_health_status{status="unhealthy"}[5m]) == 1`), aggregatorGRPC, aggregatorHTTP, d.containerd.Address, d.logDir, namespace,
		nodeName, namespace, alertmanagerAd)
}

// status prints the demo's processes and containers.
func (d *demo) status(ctx context.Context) error {
	running := false
	for _, name := range []string{chain.NameContainerd, chain.NameAggregator, chain.NameAgent, chain.NamePrometheus, chain.NameAlertmanager} {
		p, ok, err := chain.LoadProcess(d.o.dir, name)
		switch {
		case err != nil:
			fmt.Fprintf(d.out, "%-11s %v\n", name, err)
		case !ok:
			fmt.Fprintf(d.out, "%-11s not started\n", name)
		case p.Running():
			running = true
			fmt.Fprintf(d.out, "%-11s running, pid %d, log %s\n", name, p.PID, p.LogPath)
		default:
			fmt.Fprintf(d.out, "%-11s NOT running (pid %d recorded), log %s\n", name, p.PID, p.LogPath)
		}
	}
	if !running {
		fmt.Fprintln(d.out, "no demo is running: `make demo` starts one")
		return nil
	}
	c, err := d.newChain()
	if err != nil {
		return err
	}
	d.chain = c
	fmt.Fprintln(d.out)
	if out, err := c.Vigilctl(ctx, "containers"); err != nil {
		fmt.Fprintf(d.out, "(vigilctl: %v)\n", err)
	} else {
		d.out.Write(out)
	}
	fmt.Fprintln(d.out, "\nas Prometheus sees them:")
	d.promTable(ctx)
	return nil
}

// down stops and removes everything up started, whatever state it is in.
func (d *demo) down(ctx context.Context) error {
	d.say("Stopping the agent, Prometheus, Alertmanager and the aggregator (by their recorded pids)")
	errs := []error{chain.StopRecorded(d.o.dir)}
	d.say("Removing the demo's containers, tasks and CRI pod, and stopping its containerd")
	errs = append(errs, d.containerd.Teardown(ctx))
	d.say("Removing the network namespace %s, the bridge %s and %s", netnsName, bridgeName, d.o.dir)
	errs = append(errs, chain.DeleteNetNS(ctx, netnsName))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w\n(the demo directory %s is kept for a look; run `make demo-down` again)", err, d.o.dir)
	}
	if err := os.RemoveAll(d.o.dir); err != nil {
		return err
	}
	d.say("Done: nothing of the demo is left")
	return nil
}

// shellQuote renders args as a command line to copy and paste.
func shellQuote(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\*?;&|<>(){}[]#~") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func urlQuery(s string) string { return url.QueryEscape(s) }

// logFollower reads the lines appended to the agent's log since the last
// call and keeps the decisions worth showing.
type logFollower struct {
	path   string
	offset int64
}

// agentStories are the agent's log messages the demo narrates.
var agentStories = []string{`msg="health changed"`, `msg="restart decision"`, `msg="container restarted"`, `msg="container exited"`}

func (f *logFollower) next() []string {
	file, err := os.Open(f.path)
	if err != nil {
		return []string{"(" + err.Error() + ")"}
	}
	defer file.Close()
	b, err := io.ReadAll(io.NewSectionReader(file, f.offset, 1<<20))
	if err != nil {
		return []string{"(" + err.Error() + ")"}
	}
	end := bytes.LastIndexByte(b, '\n') + 1
	f.offset += int64(end)
	var out []string
	for _, line := range strings.Split(string(b[:end]), "\n") {
		for _, s := range agentStories {
			if strings.Contains(line, s) {
				out = append(out, shortenLogLine(line))
				break
			}
		}
	}
	if len(out) == 0 {
		out = append(out, "(nothing new)")
	}
	return out
}

// shortenLogLine turns `time=2026-01-02T15:04:05.000Z level=INFO msg="x" k=v`
// into `15:04:05 x k=v`.
func shortenLogLine(line string) string {
	var ts string
	if rest, ok := strings.CutPrefix(line, "time="); ok {
		t, after, _ := strings.Cut(rest, " ")
		if pt, err := time.Parse(time.RFC3339Nano, t); err == nil {
			ts = pt.Local().Format("15:04:05")
		}
		line = after
	}
	line = strings.TrimPrefix(line, "level=INFO ")
	if rest, ok := strings.CutPrefix(line, `msg="`); ok {
		if msg, after, ok := strings.Cut(rest, `"`); ok {
			line = msg + after
		}
	}
	line = strings.NewReplacer(" namespace="+namespace, "", ` signal=""`, "").Replace(line)
	return strings.TrimSpace(ts + " " + line)
}
