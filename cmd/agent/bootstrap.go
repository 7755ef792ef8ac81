package main

import (
	"flag"
	"fmt"
	"path/filepath"

	"github.com/vigilhq/vigil/internal/agent"
	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// bootstrapFlags are the node bootstrap flags: with a token file the agent
// obtains and renews its certificate itself (uplink.Keeper), keeping the
// key and certificate in --state-dir/pki.
type bootstrapFlags struct {
	tokenFile string
}

func (b *bootstrapFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&b.tokenFile, "bootstrap-token-file", "", "bootstrap token (one for the whole DaemonSet): the agent makes its key in --state-dir/pki, gets its node certificate from the aggregator and renews it (needs --tls-ca; not with --tls-cert/--tls-key)")
}

// apply points cfg's TLS files at the state dir's pki/ when bootstrapping.
func (b *bootstrapFlags) apply(cfg *agent.Config) error {
	if b.tokenFile == "" {
		return nil
	}
	switch {
	case cfg.AggregatorAddress == "":
		return fmt.Errorf("--bootstrap-token-file needs --aggregator: %w", errdefs.ErrInvalid)
	case cfg.Insecure:
		return fmt.Errorf("--bootstrap-token-file and --insecure: a token needs TLS; choose one: %w", errdefs.ErrInvalid)
	case cfg.TLS.Cert != "" || cfg.TLS.Key != "":
		return fmt.Errorf("--bootstrap-token-file and --tls-cert/--tls-key: the certificate comes from bootstrap or from files; choose one: %w", errdefs.ErrInvalid)
	case cfg.TLS.CA == "":
		return fmt.Errorf("--bootstrap-token-file needs --tls-ca (the CA that verifies the aggregator): %w", errdefs.ErrInvalid)
	}
	dir := filepath.Join(cfg.StateDir, "pki")
	cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.Pending = filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"), true
	return nil
}

// keeper returns the certificate keeper, nil when not bootstrapping.
func (b *bootstrapFlags) keeper(cfg agent.Config) (*uplink.Keeper, error) {
	if b.tokenFile == "" {
		return nil, nil
	}
	return uplink.NewKeeper(uplink.KeeperConfig{
		Address: cfg.AggregatorAddress, ServerName: cfg.TLSServerName, CAFile: cfg.TLS.CA,
		TokenFile: b.tokenFile, Dir: filepath.Dir(cfg.TLS.Key), NodeName: cfg.NodeName, Logger: cfg.Logger,
	})
}
