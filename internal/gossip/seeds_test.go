package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/metrics"
)

// fakeResolver answers from a map that the test changes; a name not in it
// is NXDOMAIN. A hand-written fake: a DNS server answering a headless
// Service's records is beyond what this test is about.
type fakeResolver struct {
	mu      sync.Mutex
	records map[string][]net.IPAddr
	asked   int
}

func (r *fakeResolver) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked++
	if ips, ok := r.records[host]; ok {
		return ips, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (r *fakeResolver) set(host string, ips ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []net.IPAddr
	for _, ip := range ips {
		out = append(out, net.IPAddr{IP: net.ParseIP(ip)})
	}
	r.records[host] = out
}

func TestSeedsFromDNS(t *testing.T) {
	t.Parallel()
	a := start(t, loopbackConfig(t, "a"))
	port := int(a.LocalAddr().Port())
	res := &fakeResolver{records: map[string][]net.IPAddr{}}
	cfg := loopbackConfig(t, "b")
	cfg.SeedDNS = "agents.vigil.svc:" + strconv.Itoa(port)
	cfg.Resolver = res
	cfg.JoinBackoffMax = 200 * time.Millisecond
	b := start(t, cfg)
	// The headless Service has no ready endpoint yet: b keeps asking.
	waitFor(t, 10*time.Second, "b asks DNS again", func() bool { res.mu.Lock(); defer res.mu.Unlock(); return res.asked >= 3 })
	if len(b.Views()) != 0 {
		t.Fatalf("b sees %v with no seed", b.Views())
	}
	// Then it has a's address, and b's own (left out).
	res.set("agents.vigil.svc", b.LocalAddr().Addr().String(), a.LocalAddr().Addr().String())
	waitFor(t, 10*time.Second, "a and b see each other", func() bool {
		return stateOf(a.Member, "b") == StateAlive && stateOf(b.Member, "a") == StateAlive
	})
}

func TestAddSeeds(t *testing.T) {
	t.Parallel()
	a := start(t, loopbackConfig(t, "a"))
	b := start(t, loopbackConfig(t, "b"))
	if err := b.AddSeeds("127.0.0.1:notaport", a.LocalAddr().String()); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("AddSeeds with a bad seed = %v, want ErrInvalid", err)
	}
	waitFor(t, 10*time.Second, "b joins a through the seed added later", func() bool {
		return stateOf(a.Member, "b") == StateAlive && stateOf(b.Member, "a") == StateAlive
	})
}

func TestConfigInvalid(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Name: "x", BindAddr: "not-an-ip"},
		{Name: "x", Seeds: []string{"host:99999"}},
		{Name: "x", ProbeInterval: time.Second, ProbeTimeout: 2 * time.Second},
		{Name: "x", AdvertiseAddr: "::zz"},
		{Name: "x", SeedDNS: ":7946"},
	} {
		if _, err := New(cfg); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("New(%+v) = %v, want ErrInvalid", cfg, err)
		}
	}
}

// TestFullQueueNeverBlocks: a delegate posting to a full queue returns at
// once, counts the drop and asks for a resync.
func TestFullQueueNeverBlocks(t *testing.T) {
	m, err := New(Config{Name: "x", EventQueue: 2})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		for range 10 {
			m.post(event{kind: evAck, name: "y"})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("post blocked on a full queue")
	}
	if got := m.stats.eventsDropped.Load(); got != 8 || !m.overflow.Load() {
		t.Errorf("dropped %d, overflow %v; want 8 dropped and a resync asked for", got, m.overflow.Load())
	}
}

// TestResyncRebuildsTheView: after an overflow, the view is rebuilt from
// memberlist's member list, even where the events it had were wrong.
func TestResyncRebuildsTheView(t *testing.T) {
	t.Parallel()
	ms := cluster(t, 3, nil)
	a, b, c := ms[0], ms[1], ms[2]
	a.post(event{kind: evLeave, name: b.Name(), addr: b.LocalAddr(), hasNode: true}) // as if b died
	waitFor(t, 5*time.Second, "a takes the made-up leave", func() bool { return stateOf(a.Member, b.Name()) == StateDead })
	c.stop(t) // a real change, whose event is lost below
	a.overflow.Store(true)
	a.post(event{kind: evAck, name: "wake-up"})
	waitFor(t, 15*time.Second, "a's view rebuilt: b alive, c gone", func() bool {
		return stateOf(a.Member, b.Name()) == StateAlive && !stateOf(a.Member, c.Name()).Reachable()
	})
	if a.stats.resyncs.Load() == 0 {
		t.Error("no resync counted")
	}
}

func TestCollect(t *testing.T) {
	t.Parallel()
	ms := cluster(t, 3, nil)
	ms[2].stop(t)
	waitFor(t, 10*time.Second, "a sees c left", func() bool { return stateOf(ms[0].Member, ms[2].Name()) == StateLeft })
	reg := metrics.NewRegistry()
	reg.Register(ms[0].Member)
	var buf bytes.Buffer
	if _, err := reg.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, buf.String())
	}
	value := func(name, label, lv string) float64 {
		for _, m := range mfs[name].GetMetric() {
			for _, l := range m.GetLabel() {
				if label == "" || l.GetName() == label && l.GetValue() == lv {
					if m.Gauge != nil {
						return m.GetGauge().GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
			if label == "" && m.Gauge != nil {
				return m.GetGauge().GetValue()
			}
			if label == "" {
				return m.GetCounter().GetValue()
			}
		}
		t.Errorf("%s{%s=%q} missing", name, label, lv)
		return -1
	}
	if v := value("vigil_agent_gossip_members", "state", "alive"); v != 1 {
		t.Errorf("alive members = %v, want 1", v)
	}
	if v := value("vigil_agent_gossip_members", "state", "left"); v != 1 {
		t.Errorf("left members = %v, want 1", v)
	}
	if v := value("vigil_agent_gossip_transmit_bytes_total", "transport", "udp"); v <= 0 {
		t.Errorf("udp bytes sent = %v, want some", v)
	}
	if v := value("vigil_agent_gossip_receive_packets_total", "", ""); v <= 0 {
		t.Errorf("packets received = %v, want some", v)
	}
}

// TestJoinRetriedUntilASeedAnswers: a member whose only seed is not up yet
// keeps trying, with backoff, and joins once the seed listens; Run's
// caller is not held up meanwhile (start returns at Ready).
func TestJoinRetriedUntilASeedAnswers(t *testing.T) {
	t.Parallel()
	// The seed's port is held (TCP and UDP) until the seed starts: a port
	// only looked up and let go was taken meanwhile by another test's
	// server (CI: "bind: address already in use", and the early member
	// talked to an HTTP server). Its TCP side closes each connection: a
	// failed join, as from a seed not yet there.
	tcp, udp, port := holdPort(t)
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cfg := loopbackConfig(t, "early")
	cfg.Seeds = []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	cfg.JoinBackoffMax = 300 * time.Millisecond
	early := start(t, cfg)
	waitFor(t, 10*time.Second, "two failed join attempts", func() bool { return early.stats.joinFailures.Load() >= 2 })
	seedCfg := loopbackConfig(t, "seed")
	seedCfg.BindPort = port
	tcp.Close()
	udp.Close()
	seed := start(t, seedCfg)
	waitFor(t, 10*time.Second, "the early member joins the seed once it listens", func() bool {
		return stateOf(seed.Member, "early") == StateAlive && stateOf(early.Member, "seed") == StateAlive
	})
}

// holdPort returns a TCP listener and a UDP socket on one free loopback
// port, and the port.
func holdPort(t *testing.T) (net.Listener, net.PacketConn, int) {
	t.Helper()
	for range 100 {
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := tcp.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			return tcp, udp, port
		}
		tcp.Close() // its UDP twin is taken: another port
	}
	t.Fatal("no loopback port free for both TCP and UDP")
	return nil, nil, 0
}

// TestAddSeedsBounded: configured seeds always stay; added ones are kept
// newest last, at most MaxAddedSeeds (hello replies over months name many
// pods long gone).
func TestAddSeedsBounded(t *testing.T) {
	cfg := Config{Name: "x", Seeds: []string{"10.0.0.1:7946"}}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * MaxAddedSeeds {
		if err := m.AddSeeds(fmt.Sprintf("10.1.0.%d:7946", i), "10.0.0.1:7946"); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.AddSeeds("10.1.0.40:7946"); err != nil { // known: moves to the end
		t.Fatal(err)
	}
	m.seedMu.Lock()
	seeds := slices.Clone(m.seeds)
	m.seedMu.Unlock()
	if len(seeds) != 1+MaxAddedSeeds || seeds[0] != "10.0.0.1:7946" {
		t.Fatalf("seeds %v: want the configured one and %d added", seeds, MaxAddedSeeds)
	}
	if last := seeds[len(seeds)-1]; last != "10.1.0.40:7946" {
		t.Errorf("last seed %q, want the one added again last", last)
	}
	if slices.Contains(seeds, "10.1.0.0:7946") {
		t.Errorf("seeds %v keep the oldest added", seeds)
	}
}
