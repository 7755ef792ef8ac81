package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/pki"
	"github.com/vigilhq/vigil/internal/remediation"
	"github.com/vigilhq/vigil/internal/store"
	"github.com/vigilhq/vigil/internal/store/bolt"
	"github.com/vigilhq/vigil/internal/store/etcd"
)

// journalFile is the bbolt file under --data-dir that holds the remediation
// journal, intents, budgets and outboxes.
const journalFile = "vigil.db"

// loadRules reads --rules-file at start: a bad file is an error with the
// line at fault, so a typo never starts an aggregator without its rules.
func loadRules(path string) (*remediation.RuleSet, error) {
	rs, err := remediation.NewRuleSet(path)
	if err != nil {
		return nil, fmt.Errorf("--rules-file: %w", err)
	}
	return rs, nil
}

// openJournal opens the embedded store under dataDir; "" means remediation
// is off (nil store).
func openJournal(dataDir string) (*bolt.Store, error) {
	if dataDir == "" {
		return nil, nil
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir: %v: %w", err, errdefs.ErrInvalid)
	}
	st, err := bolt.Open(filepath.Join(dataDir, journalFile), bolt.Options{})
	if err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	return st, nil
}

// reloadRulesOnHUP reloads the rules on every SIGHUP until ctx ends; a bad
// file keeps the rules in force and says why.
func reloadRulesOnHUP(ctx context.Context, rs *remediation.RuleSet, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := rs.Reload(); err != nil {
				log.Error("remediation rules not reloaded: the rules in force stay", "err", err)
				continue
			}
			log.Info("remediation rules reloaded")
		}
	}
}

// options are the command's settings that are not the aggregator's config.
type options struct {
	gcPercent int
	etcd      etcdFlags
	// version: print the version and exit (--version).
	version bool
}

// etcdFlags put the aggregator's durable state (the journal, intents,
// budgets, outboxes, the event history) in an etcd cluster instead of the
// bbolt file under --data-dir.
type etcdFlags struct {
	endpoints, prefix, ca, cert, key string
	requestTimeout                   time.Duration
}

func (e *etcdFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&e.endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs: keep the journal, intents, budgets and outboxes in etcd instead of --data-dir's vigil.db (aggregator replicas share them)")
	fs.StringVar(&e.prefix, "etcd-prefix", "/vigil/", "prefix of every key Vigil writes in etcd (\"/vigil\" and \"/vigil/\" are the same; it must have a name)")
	fs.StringVar(&e.ca, "etcd-ca", "", "CA bundle that verifies the etcd members (https endpoints)")
	fs.StringVar(&e.cert, "etcd-cert", "", "client certificate for etcd, when it asks for one")
	fs.StringVar(&e.key, "etcd-key", "", "private key of --etcd-cert")
	fs.DurationVar(&e.requestTimeout, "etcd-request-timeout", 5*time.Second, "bound of every etcd call: a cluster without quorum answers unavailable within it")
}

// open connects to etcd; nil when no endpoint is given.
func (e *etcdFlags) open(log *slog.Logger) (store.Store, error) {
	if e.endpoints == "" {
		return nil, nil
	}
	prefix, err := etcd.NormalizePrefix(e.prefix)
	if err != nil {
		return nil, fmt.Errorf("--etcd-prefix: %w", err)
	}
	var eps []string
	for _, ep := range strings.Split(e.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	cfg := etcd.Config{Endpoints: eps, Prefix: prefix, RequestTimeout: e.requestTimeout}
	if e.ca != "" || e.cert != "" || e.key != "" {
		var tc *tls.Config
		switch {
		case e.cert != "" || e.key != "":
			tc, err = pki.ClientConfig(pki.Files{Cert: e.cert, Key: e.key, CA: e.ca}, "")
		default:
			tc, err = pki.ServerOnlyConfig(e.ca, "")
		}
		if err != nil {
			return nil, fmt.Errorf("--etcd-ca/--etcd-cert/--etcd-key: %w", err)
		}
		cfg.TLS = tc
	}
	st, err := etcd.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("--etcd-endpoints: %w", err)
	}
	log.Info("durable state in etcd", "endpoints", eps, "prefix", prefix)
	return st, nil
}

// withRemediation opens the store (etcd when --etcd-endpoints is given,
// else the bbolt file under --data-dir) and wires it and the rules into
// cfg; the returned close releases the store after the aggregator has
// stopped.
func withRemediation(cfg *aggregator.Config, dataDir string, ef etcdFlags) (func(), error) {
	var st store.Store
	var err error
	if ef.endpoints != "" {
		st, err = ef.open(cfg.Logger)
	} else {
		var b *bolt.Store
		b, err = openJournal(dataDir)
		if b != nil {
			st = b
		}
	}
	if err != nil {
		return nil, err
	}
	if st == nil {
		cfg.Logger.Warn("remediation is off: no --data-dir or --etcd-endpoints for its journal; POST /api/v1/alerts and vigilctl restart/stop/kill answer that it is off")
		return func() {}, nil
	}
	cfg.Store = st
	// etcd is shared: this aggregator is one of its replicas.
	cfg.Replicated = ef.endpoints != ""
	return func() {
		if err := st.Close(); err != nil {
			cfg.Logger.Error("closing the journal", "err", err)
		}
	}, nil
}
