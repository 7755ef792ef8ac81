package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// fileStamp is what decides whether a file changed: its modification time,
// size, inode and change time (a stat per handshake, no read). The inode
// and change time catch a file replaced by one of the same size within the
// same clock tick (an atomic rename: a revoked token swapped for another
// of the same length), which time and size alone missed.
type fileStamp struct {
	mod   time.Time
	size  int64
	ino   uint64
	ctime int64
}

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino, st.ctime = sys.Ino, sys.Ctim.Nano()
	}
	return st, nil
}

// keyPair is a certificate and key kept in files and reloaded when either
// file changes, so that certificates that cert-manager, Vault or Vigil's
// bootstrap replace on disk are used by the next handshake without a
// restart. Safe for concurrent use.
type keyPair struct {
	certPath, keyPath string

	mu         sync.Mutex
	certStamp  fileStamp
	keyStamp   fileStamp
	cert       *tls.Certificate
	lastLoadOK bool
}

// get returns the current key pair: the files' contents when they changed
// since the last load and parse, else the pair loaded before. A pair that
// does not load (a rotation half written) keeps the previous one in use;
// with no previous one, the error says why.
func (k *keyPair) get() (*tls.Certificate, error) {
	cs, cerr := stamp(k.certPath)
	ks, kerr := stamp(k.keyPath)
	k.mu.Lock()
	defer k.mu.Unlock()
	if cerr == nil && kerr == nil && k.cert != nil && cs == k.certStamp && ks == k.keyStamp {
		return k.cert, nil
	}
	if err := errors.Join(cerr, kerr); err != nil {
		if k.cert != nil {
			return k.cert, nil
		}
		if errors.Is(cerr, fs.ErrNotExist) || errors.Is(kerr, fs.ErrNotExist) {
			return nil, fmt.Errorf("tls: no certificate at %s and %s yet (not issued, or a wrong path): %w", k.certPath, k.keyPath, errdefs.ErrInvalid)
		}
		return nil, fmt.Errorf("tls: %v: %w", err, errdefs.ErrInvalid)
	}
	cert, err := tls.LoadX509KeyPair(k.certPath, k.keyPath)
	if err != nil {
		if k.cert != nil {
			return k.cert, nil
		}
		return nil, fmt.Errorf("tls: load key pair %s, %s: %v: %w", k.certPath, k.keyPath, err, errdefs.ErrInvalid)
	}
	k.cert, k.certStamp, k.keyStamp = &cert, cs, ks
	return k.cert, nil
}

// loadPool reads a PEM CA bundle.
func loadPool(path string) (*x509.CertPool, error) {
	caPEM, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls: read CA: %v: %w", err, errdefs.ErrInvalid)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("tls: %s holds no PEM certificate: %w", path, errdefs.ErrInvalid)
	}
	return pool, nil
}
