package chain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Names of the processes a chain records in Dir/run.
const (
	NameAggregator = "aggregator"
	NameAgent      = "agent"
	NamePrometheus = "prometheus"
)

// Config says where the chain lives and how its parts talk. Addresses are
// host:port on loopback; a test picks them with FreeAddr.
type Config struct {
	// Dir holds logs (Dir/logs), pid files (Dir/run), the agent's state
	// dir, the aggregator's data and Prometheus's storage.
	Dir string
	// BinDir holds vigil-agent, vigil-aggregator and vigilctl.
	BinDir string
	// ContainerdAddress is the socket of the containerd the agent watches.
	ContainerdAddress string
	// NodeName is the agent's node name.
	NodeName string

	AggregatorGRPC string // aggregator's gRPC listen address
	AggregatorHTTP string // aggregator's /metrics and JSON API
	AgentMetrics   string // agent's own /metrics and /healthz
	Prometheus     string // Prometheus's web listen address
	// Alertmanager is Alertmanager's web listen address; "" runs none,
	// and Prometheus then sends its alerts nowhere.
	Alertmanager string

	// PrometheusConfig is the shipped configuration (deploy/demo/prometheus.yml);
	// the chain rewrites its targets to the addresses above.
	PrometheusConfig string
	// RulesDir holds the shipped alerting and recording rules (deploy/prometheus);
	// rule files in it that exist are loaded.
	RulesDir string
	// AlertmanagerConfig is the demo's Alertmanager configuration
	// (deploy/demo/alertmanager.yml); the chain rewrites its webhook to the
	// aggregator's address.
	AlertmanagerConfig string
	// RemediationRules is the aggregator's --rules-file; "" runs it with no
	// rule (alerts journaled as unmatched; operators' requests act).
	RemediationRules string

	// Agent tuning: its sampling interval and restart backoff.
	Interval                                 time.Duration
	BackoffInitial, BackoffMax, BackoffReset time.Duration

	// Extra flags for the binaries, appended after the chain's own.
	AgentArgs, AggregatorArgs []string

	// Detach leaves the processes running when the program that started
	// them exits (the demo). Otherwise they die with it (tests).
	Detach bool
}

// Chain is the running data path. Its methods are not safe for concurrent
// use; a test drives it from one goroutine.
type Chain struct {
	cfg Config

	Aggregator, Agent, Prometheus, Alertmanager *Process
}

// New checks cfg and creates the chain's directories. It starts nothing.
func New(cfg Config) (*Chain, error) {
	var missing []string
	for name, v := range map[string]string{
		"Dir": cfg.Dir, "BinDir": cfg.BinDir, "ContainerdAddress": cfg.ContainerdAddress, "NodeName": cfg.NodeName,
		"AggregatorGRPC": cfg.AggregatorGRPC, "AggregatorHTTP": cfg.AggregatorHTTP, "AgentMetrics": cfg.AgentMetrics,
		"Prometheus": cfg.Prometheus, "PrometheusConfig": cfg.PrometheusConfig,
	} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("chain config: missing %s", strings.Join(missing, ", "))
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cfg.Dir = dir
	for _, d := range []string{"logs", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	return &Chain{cfg: cfg}, nil
}

// AgentStateDir is the agent's --state-dir.
func (c *Chain) AgentStateDir() string { return filepath.Join(c.cfg.Dir, "agent-state") }

// Bin returns the path of one of the binaries.
func (c *Chain) Bin(name string) string { return filepath.Join(c.cfg.BinDir, name) }

// SetAggregatorArgs replaces Config.AggregatorArgs for the aggregator's
// next start (a test that restarts it with other flags).
func (c *Chain) SetAggregatorArgs(args ...string) { c.cfg.AggregatorArgs = args }

// AggregatorDataDir is the aggregator's --data-dir (its journal).
func (c *Chain) AggregatorDataDir() string { return filepath.Join(c.cfg.Dir, "aggregator-data") }

// AggregatorCommand is the aggregator's command line: insecure (no TLS), on
// the chain's loopback addresses, with its journal in AggregatorDataDir.
func (c *Chain) AggregatorCommand() []string {
	args := []string{
		"--grpc-listen", c.cfg.AggregatorGRPC,
		"--http-listen", c.cfg.AggregatorHTTP,
		"--insecure",
		"--data-dir", c.AggregatorDataDir(),
	}
	if c.cfg.RemediationRules != "" {
		args = append(args, "--rules-file", c.cfg.RemediationRules)
	}
	return append(args, c.cfg.AggregatorArgs...)
}

// AgentCommand is the agent's command line.
func (c *Chain) AgentCommand() []string {
	args := []string{
		"--node-name", c.cfg.NodeName,
		"--state-dir", c.AgentStateDir(),
		"--containerd", c.cfg.ContainerdAddress,
		"--aggregator", c.cfg.AggregatorGRPC,
		"--insecure",
		// The chain's aggregator is on loopback without TLS: the agent
		// carries out its commands (remediation) only when told to.
		"--accept-commands",
		"--metrics-listen", c.cfg.AgentMetrics,
	}
	if c.cfg.Interval > 0 {
		args = append(args, "--interval", c.cfg.Interval.String())
	}
	if c.cfg.BackoffInitial > 0 {
		args = append(args, "--restart-backoff-initial", c.cfg.BackoffInitial.String())
	}
	if c.cfg.BackoffMax > 0 {
		args = append(args, "--restart-backoff-max", c.cfg.BackoffMax.String())
	}
	if c.cfg.BackoffReset > 0 {
		args = append(args, "--restart-backoff-reset", c.cfg.BackoffReset.String())
	}
	return append(args, c.cfg.AgentArgs...)
}

// StartAggregator starts vigil-aggregator and waits until its /healthz
// answers.
func (c *Chain) StartAggregator(ctx context.Context) error {
	p, err := startProcess(c.cfg.Dir, NameAggregator, c.Bin("vigil-aggregator"), c.AggregatorCommand(), c.cfg.Detach)
	if err != nil {
		return err
	}
	c.Aggregator = p
	return waitHTTP(ctx, p, "http://"+c.cfg.AggregatorHTTP+"/healthz")
}

// StartAgent starts vigil-agent on the chain's state dir and waits until
// its /healthz answers.
func (c *Chain) StartAgent(ctx context.Context) error {
	if err := os.MkdirAll(c.AgentStateDir(), 0o700); err != nil {
		return err
	}
	p, err := startProcess(c.cfg.Dir, NameAgent, c.Bin("vigil-agent"), c.AgentCommand(), c.cfg.Detach)
	if err != nil {
		return err
	}
	c.Agent = p
	return waitHTTP(ctx, p, "http://"+c.cfg.AgentMetrics+"/healthz")
}

// PrometheusConfigPath is where the chain writes the configuration it runs
// Prometheus with.
func (c *Chain) PrometheusConfigPath() string { return filepath.Join(c.cfg.Dir, "prometheus.yml") }

// StartPrometheus writes the Prometheus configuration and starts Debian's
// Prometheus with its own storage under Dir, and waits until it is ready.
func (c *Chain) StartPrometheus(ctx context.Context) error {
	tmpl, err := os.ReadFile(c.cfg.PrometheusConfig)
	if err != nil {
		return fmt.Errorf("prometheus config: %w", err)
	}
	conf, err := RenderPrometheusConfig(string(tmpl), c.cfg.AggregatorHTTP, c.cfg.AgentMetrics, c.cfg.RulesDir)
	if err != nil {
		return err
	}
	if conf, err = renderAlerting(conf, c.cfg.Alertmanager); err != nil {
		return err
	}
	if err := os.WriteFile(c.PrometheusConfigPath(), []byte(conf), 0o644); err != nil {
		return err
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.CommandContext(ctx, promtool, "check", "config", c.PrometheusConfigPath()).CombinedOutput(); err != nil {
			return fmt.Errorf("promtool check config %s: %w\n%s", c.PrometheusConfigPath(), err, out)
		}
	}
	storage := filepath.Join(c.cfg.Dir, "prometheus-data")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return err
	}
	p, err := startProcess(c.cfg.Dir, NamePrometheus, "prometheus", []string{
		"--config.file", c.PrometheusConfigPath(),
		"--storage.tsdb.path", storage,
		"--storage.tsdb.retention.time", "1d",
		"--web.listen-address", c.cfg.Prometheus,
		"--web.enable-lifecycle",
	}, c.cfg.Detach)
	if err != nil {
		return err
	}
	c.Prometheus = p
	return waitHTTP(ctx, p, "http://"+c.cfg.Prometheus+"/-/ready")
}

// Demo ports in the shipped Prometheus config, rewritten by
// RenderPrometheusConfig.
const (
	demoAggregatorHTTP = "127.0.0.1:17401"
	demoAgentMetrics   = "127.0.0.1:17402"
)

// RenderPrometheusConfig rewrites the shipped demo configuration for other
// addresses, and its rule_files globs (relative to deploy/demo) to rulesDir.
func RenderPrometheusConfig(tmpl, aggregatorHTTP, agentMetrics, rulesDir string) (string, error) {
	if !strings.Contains(tmpl, demoAggregatorHTTP) {
		return "", fmt.Errorf("prometheus config: no target %s to rewrite", demoAggregatorHTTP)
	}
	out := strings.ReplaceAll(tmpl, demoAggregatorHTTP, aggregatorHTTP)
	out = strings.ReplaceAll(out, demoAgentMetrics, agentMetrics)
	if rulesDir != "" {
		abs, err := filepath.Abs(rulesDir)
		if err != nil {
			return "", err
		}
		out = strings.ReplaceAll(out, "../prometheus/", abs+"/")
	}
	return out, nil
}

// waitHTTP polls url until it answers 200, the process dies, or 30 s pass.
func waitHTTP(ctx context.Context, p *Process, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	hc := &http.Client{Timeout: time.Second}
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		last = err
		if !p.Running() {
			return fmt.Errorf("%s exited during start-up; log tail of %s:\n%s", p.Name, p.LogPath, LogTail(p.LogPath, 20))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %v; log tail of %s:\n%s", p.Name, url, last, p.LogPath, LogTail(p.LogPath, 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop stops the agent, Prometheus, Alertmanager and the aggregator (SIGTERM, then
// SIGKILL after a grace period), started by this program or recorded in Dir
// by another. It keeps going after errors; safe when nothing runs.
func (c *Chain) Stop() error {
	return StopRecorded(c.cfg.Dir)
}

// StopRecorded stops the chain's processes recorded in dir/run.
func StopRecorded(dir string) error {
	var errs []error
	for _, name := range []string{NameAgent, NamePrometheus, NameAlertmanager, NameAggregator} {
		p, ok, err := LoadProcess(dir, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			errs = append(errs, p.Stop(10*time.Second))
		}
	}
	return errors.Join(errs...)
}

// Vigilctl runs vigilctl against the chain's aggregator and returns its
// standard output.
func (c *Chain) Vigilctl(ctx context.Context, args ...string) ([]byte, error) {
	full := append([]string{"--server", c.cfg.AggregatorGRPC, "--insecure"}, args...)
	cmd := exec.CommandContext(ctx, c.Bin("vigilctl"), full...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("vigilctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago (for tests; the demo uses fixed ports).
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// CheckFree returns a clear error if addr cannot be listened on.
func CheckFree(addr, what string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s port %s is taken (%v): stop the program holding it (`ss -ltnp 'sport = :%s'` names it), or run `make demo-down` if it is an earlier demo",
			what, addr, err, addr[strings.LastIndexByte(addr, ':')+1:])
	}
	return l.Close()
}

// LogTail returns the last n lines of a log file.
func LogTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
