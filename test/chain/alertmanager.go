package chain

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// NameAlertmanager is the Alertmanager's name in Dir/run and Dir/logs.
const NameAlertmanager = "alertmanager"

// Demo addresses in the shipped demo configurations, rewritten for other
// addresses: Alertmanager's web listener (deploy/demo/prometheus.yml's
// alerting target) and the aggregator's webhook in
// deploy/demo/alertmanager.yml.
const (
	demoAlertmanager = "127.0.0.1:17493"
	alertingBegin    = "# alerting: begin"
	alertingEnd      = "# alerting: end"
)

// AlertmanagerBinary is Debian's Alertmanager.
const AlertmanagerBinary = "prometheus-alertmanager"

// renderAlerting points the Prometheus configuration's alerting block at
// addr, or removes the block when addr is "" (a chain without an
// Alertmanager must not send to the demo's, which may run on the same
// machine).
func renderAlerting(conf, addr string) (string, error) {
	begin, end := strings.Index(conf, alertingBegin), strings.Index(conf, alertingEnd)
	if begin < 0 || end < begin {
		return "", fmt.Errorf("prometheus config: no %q ... %q block", alertingBegin, alertingEnd)
	}
	if addr == "" {
		return conf[:begin] + conf[end+len(alertingEnd):], nil
	}
	return strings.ReplaceAll(conf, demoAlertmanager, addr), nil
}

// RenderAlertmanagerConfig rewrites the demo's Alertmanager configuration
// for an aggregator whose HTTP listener is aggregatorHTTP.
func RenderAlertmanagerConfig(tmpl, aggregatorHTTP string) (string, error) {
	if !strings.Contains(tmpl, demoAggregatorHTTP) {
		return "", fmt.Errorf("alertmanager config: no webhook at %s to rewrite", demoAggregatorHTTP)
	}
	return strings.ReplaceAll(tmpl, demoAggregatorHTTP, aggregatorHTTP), nil
}

// AlertmanagerConfigPath is where the chain writes the configuration it
// runs Alertmanager with.
func (c *Chain) AlertmanagerConfigPath() string { return filepath.Join(c.cfg.Dir, "alertmanager.yml") }

// StartAlertmanager writes the Alertmanager configuration (checked with
// amtool when it is installed) and starts Debian's Alertmanager alone (no
// cluster) with its storage under Dir, and waits until it is ready.
func (c *Chain) StartAlertmanager(ctx context.Context) error {
	if c.cfg.Alertmanager == "" || c.cfg.AlertmanagerConfig == "" {
		return fmt.Errorf("chain config: Alertmanager and AlertmanagerConfig are needed to start Alertmanager")
	}
	tmpl, err := os.ReadFile(c.cfg.AlertmanagerConfig)
	if err != nil {
		return fmt.Errorf("alertmanager config: %w", err)
	}
	conf, err := RenderAlertmanagerConfig(string(tmpl), c.cfg.AggregatorHTTP)
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.AlertmanagerConfigPath(), []byte(conf), 0o644); err != nil {
		return err
	}
	if amtool, err := exec.LookPath("amtool"); err == nil {
		if out, err := exec.CommandContext(ctx, amtool, "check-config", c.AlertmanagerConfigPath()).CombinedOutput(); err != nil {
			return fmt.Errorf("amtool check-config %s: %w\n%s", c.AlertmanagerConfigPath(), err, out)
		}
	}
	storage := filepath.Join(c.cfg.Dir, "alertmanager-data")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return err
	}
	p, err := startProcess(c.cfg.Dir, NameAlertmanager, AlertmanagerBinary, []string{
		"--config.file", c.AlertmanagerConfigPath(),
		"--storage.path", storage,
		"--web.listen-address", c.cfg.Alertmanager,
		// Alone: no gossip port, no peers.
		"--cluster.listen-address=",
	}, c.cfg.Detach)
	if err != nil {
		return err
	}
	c.Alertmanager = p
	return waitHTTP(ctx, p, "http://"+c.cfg.Alertmanager+"/-/ready")
}
