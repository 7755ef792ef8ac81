package aggregator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/store"
)

const (
	// bindingsPrefix holds one key per bound node name (the name follows
	// the prefix), its value a JSON binding.
	bindingsPrefix = "node-bindings/"
	// bindAttempts bounds how often bind and release read again after
	// another writer changed the name's key between their read and write.
	bindAttempts = 5
	// migrateTimeout bounds moving a bindings file into the store at start.
	migrateTimeout = 30 * time.Second
)

// storeBindings are the node name bindings kept in the aggregator's store:
// every replica sharing the store sees the same ones, and they outlive a
// restart. Each write is conditioned on the key's revision (create-if-absent
// for a new name), so the first key to bind a name wins fleet-wide. Safe for
// concurrent use.
type storeBindings struct {
	st  store.Store
	max int // 0: no cap
}

func bindingKey(name string) string { return bindingsPrefix + name }

// get returns name's binding and its key's revision; found is false for a
// free name.
func (b *storeBindings) get(ctx context.Context, name string) (binding, int64, bool, error) {
	kv, err := b.st.Get(ctx, bindingKey(name))
	if errors.Is(err, errdefs.ErrNotFound) {
		return binding{}, 0, false, nil
	}
	if err != nil {
		return binding{}, 0, false, fmt.Errorf("node binding of %s: %w", name, err)
	}
	var old binding
	if err := json.Unmarshal(kv.Value, &old); err != nil {
		return binding{}, kv.ModRevision, true, fmt.Errorf("node binding of %s in the store is unreadable (%v); release it with vigilctl nodes release %s: %w", name, err, name, errdefs.ErrInvalid)
	}
	return old, kv.ModRevision, true, nil
}

func (b *storeBindings) bind(ctx context.Context, name, fp, by string, rebind bool) error {
	value, err := json.Marshal(binding{KeySHA256: fp, BoundAt: time.Now().UTC(), By: by})
	if err != nil {
		return err
	}
	for range bindAttempts {
		old, rev, bound, err := b.get(ctx, name)
		if err != nil {
			return err
		}
		if bound && old.KeySHA256 == fp {
			return nil
		}
		if bound && !rebind {
			return errBound(name, old)
		}
		if !bound {
			if err := b.checkCap(ctx, name); err != nil {
				return err
			}
		}
		// rev is 0 for a free name: the write is a create-if-absent.
		_, err = store.CompareAndSwap(ctx, b.st, bindingKey(name), value, rev)
		if !store.IsConflict(err) {
			return err
		}
	}
	return fmt.Errorf("node binding of %s changed %d times while it was being bound; try again: %w", name, bindAttempts, errdefs.ErrUnavailable)
}

// checkCap refuses a new name when max names are bound. Replicas binding
// new names at the same moment may pass it together: the cap bounds what a
// leaked token can bind, it is not exact.
func (b *storeBindings) checkCap(ctx context.Context, name string) error {
	if b.max <= 0 {
		return nil
	}
	kvs, _, err := b.st.List(ctx, bindingsPrefix, b.max)
	if err != nil {
		return fmt.Errorf("node bindings: %w", err)
	}
	if len(kvs) >= b.max {
		return errBindingsFull(b.max, name)
	}
	return nil
}

func (b *storeBindings) release(ctx context.Context, name string) (string, bool, error) {
	for range bindAttempts {
		old, rev, bound, err := b.get(ctx, name)
		if !bound {
			return "", false, err
		}
		// An unreadable binding is released too (its key is unknown).
		res, err := b.st.Txn(ctx, []store.Cond{{Key: bindingKey(name), ModRevision: rev}}, []store.Op{store.Delete(bindingKey(name))})
		if err != nil {
			return "", false, fmt.Errorf("release node binding of %s: %w", name, err)
		}
		if res.Succeeded {
			return old.KeySHA256, true, nil
		}
	}
	return "", false, fmt.Errorf("node binding of %s changed %d times while it was being released; try again: %w", name, bindAttempts, errdefs.ErrUnavailable)
}

// migrateBindings moves the bindings of path (the file an aggregator
// without a shared store kept) into b: a name already bound in the store
// keeps the store's binding. The file is then renamed to path.migrated, so
// that a name released later does not come back at the next start. No file
// is nothing to do. It may run again after a failure: what it wrote is
// then in the store, which wins.
func migrateBindings(ctx context.Context, path string, b *storeBindings, log *slog.Logger) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	f, err := openBindings(path, 0)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(f.nodes))
	for name := range f.nodes {
		names = append(names, name)
	}
	sort.Strings(names)
	var migrated, kept []string
	for _, name := range names {
		value, err := json.Marshal(f.nodes[name])
		if err != nil {
			return err
		}
		_, err = store.Create(ctx, b.st, bindingKey(name), value, store.NoLease)
		switch {
		case store.IsConflict(err):
			kept = append(kept, name)
		case err != nil:
			return fmt.Errorf("node bindings %s: moving them into the store: %w", path, err)
		default:
			migrated = append(migrated, name)
		}
	}
	if err := os.Rename(path, path+".migrated"); err != nil {
		return fmt.Errorf("node bindings %s: moved into the store, but the file cannot be renamed (a name released later would come back at the next start): %v: %w", path, err, errdefs.ErrUnavailable)
	}
	log.Info("node bindings moved from their file into the store", "file", path, "renamed_to", path+".migrated",
		"migrated", migrated, "kept_from_store", kept)
	return nil
}
