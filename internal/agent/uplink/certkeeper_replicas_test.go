package uplink_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/agent/uplink"
	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// deadAddr is a loopback address nothing listens on (connection refused).
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// startKeeper runs k until the returned stop is called (or the test ends).
func startKeeper(t *testing.T, k *uplink.Keeper) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("keeper Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// logRecorder keeps every record logged through it.
type logRecorder struct {
	mu   *sync.Mutex
	recs *[]slog.Record
}

func newLogRecorder() logRecorder { return logRecorder{mu: &sync.Mutex{}, recs: &[]slog.Record{}} }

func (r logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	*r.recs = append(*r.recs, rec.Clone())
	r.mu.Unlock()
	return nil
}
func (r logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r logRecorder) WithGroup(string) slog.Handler      { return r }

// count returns how many records with msg were logged at each level.
func (r logRecorder) count(msg string) map[slog.Level]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := map[slog.Level]int{}
	for _, rec := range *r.recs {
		if rec.Message == msg {
			n[rec.Level]++
		}
	}
	return n
}

// atLeast returns the records at level or above.
func (r logRecorder) atLeast(level slog.Level) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range *r.recs {
		if rec.Level >= level {
			line := rec.Message
			rec.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
			out = append(out, line)
		}
	}
	return out
}

// selfMetric reads one sample of c's exposition.
func selfMetric(t *testing.T, c metrics.Collector, name string) float64 {
	t.Helper()
	reg := metrics.NewRegistry()
	reg.Register(c)
	var b bytes.Buffer
	if _, err := reg.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s in\n%s", name, b.String())
	return 0
}

// TestKeeperAddressList: with --aggregator listing replicas of which the
// first ones are down, bootstrap and renewal go through the list to the
// one that answers; a dns:/// target in the list keeps working; with every
// address down a renewal fails (counted), and the expiry gauge keeps the
// current certificate's not-after.
func TestKeeperAddressList(t *testing.T) {
	s := startBootstrapScene(t, time.Hour)
	token := s.tokenFile(t, "daemonset-token-0123456789")
	dir := filepath.Join(t.TempDir(), "pki")
	_, port, err := net.SplitHostPort(s.agg.GRPCAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	live := s.agg.GRPCAddr().String()

	// Bootstrap: two replicas down, then the live one named through DNS.
	boot := s.keeperWith(t, uplink.KeeperConfig{Address: deadAddr(t) + "," + deadAddr(t) + ", dns:///localhost:" + port,
		TokenFile: token, Dir: dir, NodeName: node})
	if got := selfMetric(t, boot.Collector(), "vigil_agent_node_certificate_expiry_timestamp_seconds"); got != 0 {
		t.Fatalf("expiry before any certificate = %v, want 0", got)
	}
	stop := startKeeper(t, boot)
	waitFor(t, "the bootstrap through the address list", func() bool { return boot.Issued() == 1 })
	stop()
	cert := readCert(t, boot.Files().Cert)
	if got := selfMetric(t, boot.Collector(), "vigil_agent_node_certificate_expiry_timestamp_seconds"); got != float64(cert.NotAfter.Unix()) {
		t.Fatalf("expiry gauge = %v, want the certificate's not-after %d", got, cert.NotAfter.Unix())
	}

	// Renewal with every address down: counted as failed, retried.
	down := s.keeperWith(t, uplink.KeeperConfig{Address: deadAddr(t) + "," + deadAddr(t), TokenFile: token, Dir: dir, NodeName: node,
		RenewFraction: 0.001})
	stop = startKeeper(t, down)
	waitFor(t, "two failed renewals", func() bool { return down.RenewalFailures() >= 2 })
	stop()
	if got := selfMetric(t, down.Collector(), "vigil_agent_node_certificate_renewal_failures_total"); got < 2 {
		t.Fatalf("renewal failures metric = %v, want at least 2", got)
	}
	if got := selfMetric(t, down.Collector(), "vigil_agent_node_certificate_expiry_timestamp_seconds"); got != float64(cert.NotAfter.Unix()) {
		t.Fatalf("expiry gauge after failed renewals = %v, want the stored certificate's %d", got, cert.NotAfter.Unix())
	}

	// Renewal with the first replica down: the next one renews (with the
	// certificate, not the token: no second bootstrap).
	renew := s.keeperWith(t, uplink.KeeperConfig{Address: deadAddr(t) + "," + live, TokenFile: token, Dir: dir, NodeName: node,
		RenewFraction: 0.001})
	startKeeper(t, renew)
	waitFor(t, "a renewal through the address list", func() bool { return renew.Renewals() >= 1 })
	if renew.Issued() != renew.Renewals() || renew.RenewalFailures() != 0 {
		t.Fatalf("issued %d, renewals %d, renewal failures %d: want renewals only", renew.Issued(), renew.Renewals(), renew.RenewalFailures())
	}
	if got := counterValue(t, s.reg, "vigil_aggregator_node_certificates_issued_total", "kind", "renew"); got < 1 {
		t.Fatalf("aggregator counted %v renewals", got)
	}
}

// TestKeeperAddressListRefusalEnds: a refusal (a revoked token) is the
// answer: the keeper does not take it for an unreachable replica, and the
// error says why.
func TestKeeperAddressListRefusalEnds(t *testing.T) {
	s := startBootstrapScene(t, time.Hour)
	rec := newLogRecorder()
	k := s.keeperWith(t, uplink.KeeperConfig{Address: deadAddr(t) + "," + s.agg.GRPCAddr().String(),
		TokenFile: s.tokenFile(t, "not-a-token-0123456789"), Dir: filepath.Join(t.TempDir(), "pki"), NodeName: node,
		Logger: slog.New(rec)})
	startKeeper(t, k)
	waitFor(t, "three refused attempts", func() bool {
		n := rec.count("node certificate not obtained; retrying")
		return n[slog.LevelWarn]+n[slog.LevelDebug] >= 3
	})
	// One Warn per distinct error: the refusal, with its reason.
	warns := rec.atLeast(slog.LevelWarn)
	if len(warns) != 1 || !strings.Contains(warns[0], "permission denied") {
		t.Fatalf("warnings = %q, want one, naming the refusal", warns)
	}
}

// TestNoCertificateWaitIsQuiet: while the keeper has not yet obtained the
// certificate, the uplink waits without dialing and without warnings (one
// Info line), then connects as soon as the certificate is there.
func TestNoCertificateWaitIsQuiet(t *testing.T) {
	s := startBootstrapScene(t, time.Hour)
	dir := filepath.Join(t.TempDir(), "pki")
	k := s.keeperWith(t, uplink.KeeperConfig{Address: s.agg.GRPCAddr().String(),
		TokenFile: s.tokenFile(t, "daemonset-token-0123456789"), Dir: dir, NodeName: node})
	clientTLS, err := pki.ClientConfig(k.Files(), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	rec := newLogRecorder()
	st := &exitCounter{containers: map[string]*vigilv1.Container{}}
	cfg := testConfig(t, s.agg.GRPCAddr().String())
	cfg.TLS, cfg.Logger = clientTLS, slog.New(rec)
	u, err := uplink.New(cfg, st.snapshot)
	if err != nil {
		t.Fatal(err)
	}
	run(t, u)
	const wait = "waiting for the node certificate before dialing the aggregator"
	waitFor(t, "several waits for the certificate", func() bool {
		n := rec.count(wait)
		return n[slog.LevelInfo]+n[slog.LevelDebug] >= 5
	})
	if n := rec.count(wait); n[slog.LevelInfo] != 1 {
		t.Fatalf("waits logged at Info: %d, want 1 (the rest at Debug)", n[slog.LevelInfo])
	}
	if w := rec.atLeast(slog.LevelWarn); len(w) != 0 {
		t.Fatalf("warnings while waiting for the certificate: %q", w)
	}
	if got := u.Stats().Reconnects; got != 0 {
		t.Fatalf("reconnects while waiting for the certificate = %d, want 0 (nothing dialed)", got)
	}
	startKeeper(t, k)
	waitReady(t, u)
	if w := rec.atLeast(slog.LevelWarn); len(w) != 0 {
		t.Fatalf("warnings on a first start that succeeded: %q", w)
	}
}

// TestKeeperAddressInvalid: an address list that names no address is
// refused when the keeper is made, as the uplink refuses it.
func TestKeeperAddressInvalid(t *testing.T) {
	for _, addr := range []string{"", " , ,"} {
		_, err := uplink.NewKeeper(uplink.KeeperConfig{Address: addr, CAFile: "ca", TokenFile: "t", Dir: "d", NodeName: node})
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("NewKeeper(Address %q) = %v, want ErrInvalid", addr, err)
		}
		_, err = uplink.New(uplink.Config{Address: addr, NodeName: node}, func() *vigilv1.Snapshot { return nil })
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("New(Address %q) = %v, want ErrInvalid", addr, err)
		}
	}
}
