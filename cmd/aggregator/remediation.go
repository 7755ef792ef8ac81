package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/remediation"
	"github.com/vigilhq/vigil/internal/store/bolt"
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

// withRemediation opens the journal and wires the store and rules into cfg;
// the returned close releases the store after the aggregator has stopped.
func withRemediation(cfg *aggregator.Config, dataDir string) (func(), error) {
	st, err := openJournal(dataDir)
	if err != nil {
		return nil, err
	}
	if st == nil {
		cfg.Logger.Warn("remediation is off: no --data-dir for its journal; POST /api/v1/alerts and vigilctl restart/stop/kill answer that it is off")
		return func() {}, nil
	}
	cfg.Store = st
	return func() {
		if err := st.Close(); err != nil {
			cfg.Logger.Error("closing the journal", "err", err)
		}
	}, nil
}
