package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
)

// securityFlags are the flags of roles, bootstrap, API tokens and quotas.
type securityFlags struct {
	caCert, caKey   string
	bootstrapTokens string
	apiTokens       string
	dataDir         string
	rulesFile       string
}

func (s *securityFlags) register(fs *flag.FlagSet, cfg *aggregator.Config) {
	fs.StringVar(&s.caCert, "ca-cert", "", "CA certificate that signs node certificates at bootstrap (node bootstrap)")
	fs.StringVar(&s.caKey, "ca-key", "", "private key of --ca-cert")
	fs.StringVar(&s.bootstrapTokens, "bootstrap-tokens-file", "", `bootstrap tokens, "TOKEN NAME" per line; reloaded when it changes (revoke = delete the line)`)
	fs.StringVar(&s.apiTokens, "api-tokens-file", "", `bearer tokens of the HTTP API, "TOKEN ROLE NAME" per line (ROLE viewer, operator or alertmanager); reloaded when it changes`)
	fs.StringVar(&s.dataDir, "data-dir", "", "directory of the aggregator's state: vigil.db (the remediation journal, intents, budgets, outboxes and which key each bootstrapped node name is bound to; with --etcd-endpoints these live in etcd); a node-bindings.json left by an older aggregator is moved into the store at start")
	fs.StringVar(&s.rulesFile, "rules-file", "", "remediation rules (YAML, deploy/remediation/rules.yaml); checked at start, reloaded on SIGHUP (a bad file keeps the rules in force); none: alerts are journaled as unmatched")
	cfg.Bootstrap = &aggregator.BootstrapConfig{NodeCertTTL: aggregator.DefaultNodeCertTTL}
	fs.DurationVar(&cfg.Bootstrap.NodeCertTTL, "node-cert-ttl", aggregator.DefaultNodeCertTTL, "lifetime of node certificates issued at bootstrap (renewed at 2/3)")
	fs.IntVar(&cfg.Bootstrap.MaxBindings, "max-node-bindings", aggregator.DefaultMaxStreams, "node names bound to keys at once; a bootstrap of a new name beyond it is refused")
	fs.BoolVar(&cfg.AllowCommonNameNodes, "allow-cn-nodes", false, "accept a client certificate without a spiffe://vigil/ROLE/NAME URI SAN as the node named by its common name (certificates issued before roles)")
	fs.BoolVar(&cfg.MetricsRequireAuth, "metrics-require-auth", false, "/metrics needs TLS and a viewer credential, as /api/v1 does (/healthz and /readyz stay plain)")
	q := &cfg.Quotas
	fs.IntVar(&q.Containers, "max-containers-per-node", aggregator.DefaultQuotaContainers, "containers one node may report")
	fs.IntVar(&q.NetworkNamespaces, "max-netns-per-node", aggregator.DefaultQuotaNetworkNamespaces, "network namespaces one node may report")
	fs.IntVar(&q.InterfacesPerNamespace, "max-interfaces-per-netns", aggregator.DefaultQuotaInterfacesPerNamespace, "interfaces one network namespace may hold")
	fs.IntVar(&q.ExitPairs, "max-exit-pairs-per-container", aggregator.DefaultQuotaExitPairs, "distinct exit (reason, code) pairs one container may count")
	fs.IntVar(&q.Labels, "max-labels-per-container", aggregator.DefaultQuotaLabels, "labels one container may carry")
	fs.IntVar(&q.StringBytes, "max-string-bytes", aggregator.DefaultQuotaStringBytes, "longest string (label, name, probe output) an agent may send")
	fs.IntVar(&cfg.MaxStreams, "max-streams", aggregator.DefaultMaxStreams, "agent streams connected at once")
	fs.IntVar(&cfg.MaxWatchers, "max-watchers", aggregator.DefaultMaxWatchers, "WatchEvents subscribers at once")
}

// apply loads the files the flags name into cfg.
func (s *securityFlags) apply(cfg *aggregator.Config) error {
	if s.apiTokens != "" {
		tf, err := pki.OpenAPITokens(s.apiTokens)
		if err != nil {
			return fmt.Errorf("--api-tokens-file: %w", err)
		}
		cfg.APITokens = tf
	}
	anyBoot := s.caCert != "" || s.caKey != "" || s.bootstrapTokens != ""
	if !anyBoot {
		cfg.Bootstrap = nil
		return nil
	}
	if s.caCert == "" || s.caKey == "" || s.bootstrapTokens == "" || s.dataDir == "" {
		return fmt.Errorf("node bootstrap needs --ca-cert, --ca-key, --bootstrap-tokens-file and --data-dir together: %w", errdefs.ErrInvalid)
	}
	ca, err := pki.LoadCA(s.caCert, s.caKey)
	if err != nil {
		return fmt.Errorf("--ca-cert/--ca-key: %w", err)
	}
	tf, err := pki.OpenBootstrapTokens(s.bootstrapTokens)
	if err != nil {
		return fmt.Errorf("--bootstrap-tokens-file: %w", err)
	}
	if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %v: %w", err, errdefs.ErrInvalid)
	}
	cfg.Bootstrap.CA = ca
	cfg.Bootstrap.Tokens = tf
	cfg.Bootstrap.BindingsFile = filepath.Join(s.dataDir, "node-bindings.json")
	return nil
}
