package gossip

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Member is this agent in the gossip cluster. Make it with New, then call
// Run. Its methods are safe for concurrent use, before, during and after
// Run.
type Member struct {
	cfg  Config
	log  *slog.Logger
	ring *memberlist.Keyring // nil: not encrypted

	// events is the bounded queue from memberlist's delegates to the view
	// (Config.EventQueue). overflow is set when an event was dropped: the
	// view is then rebuilt from memberlist's member list.
	events   chan event
	overflow atomic.Bool

	mu      sync.RWMutex
	views   map[string]*View // peers only, by name
	changed chan struct{}    // capacity 1: "the views changed"

	localMu  sync.Mutex
	local    Meta
	meta     atomic.Pointer[[]byte] // local, encoded, read by NodeMeta
	metaPoke chan struct{}

	keyMu   sync.Mutex
	keyData []byte // the key file's content as last applied

	seedMu   sync.Mutex
	seeds    []string
	seedPoke chan struct{}

	running atomic.Bool
	ready   chan struct{}
	ml      atomic.Pointer[memberlist.Memberlist]
	// localAddr is the advertised address, read once at start: memberlist
	// changes the Nodes that LocalNode and Members return in place, under
	// a lock of its own, so reading them later races.
	localAddr atomic.Pointer[netip.AddrPort]
	tr        atomic.Pointer[countingTransport]
	crashed   atomic.Bool // tests: stopped without leaving, as a kill would
	// shutDown: memberlist is being shut down; what it still logs (its
	// goroutines outlive Shutdown: a connection handler, a listener's
	// accept failing on its closed socket) is dropped by logSink, since
	// the logger may be gone with whoever started the member (a test's).
	shutDown atomic.Bool
	// selfConflict: a peer's state gave this member's name another
	// address (this node's previous life, not yet declared dead).
	selfConflict atomic.Bool
	// isolated is the agent's verdict on itself (SetIsolated), shown in
	// the self-metrics.
	isolated atomic.Bool
	// cross is the member's side of cross-checks (crosscheck.go).
	cross crossState

	stats struct {
		eventsDropped, resyncs       atomic.Uint64
		joins, joinFailures          atomic.Uint64
		conflicts                    atomic.Uint64
		keyReloads, keyReloadErrors  atomic.Uint64
		metaUpdates, metaUpdateFails atomic.Uint64
	}
}

// New checks cfg, fills in its defaults and reads the key file. It binds
// nothing: Run does.
func New(cfg Config) (*Member, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m := &Member{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "gossip"),
		events:   make(chan event, cfg.EventQueue),
		views:    make(map[string]*View),
		changed:  make(chan struct{}, 1),
		local:    Meta{AgentVersion: cfg.AgentVersion},
		metaPoke: make(chan struct{}, 1),
		seeds:    slices.Clone(cfg.Seeds),
		seedPoke: make(chan struct{}, 1),
		ready:    make(chan struct{}),
		cross:    newCrossState(),
	}
	enc := m.local.Encode()
	m.meta.Store(&enc)
	if cfg.KeyFile != "" {
		data, err := os.ReadFile(cfg.KeyFile)
		if err != nil {
			if os.IsNotExist(err) {
				return nil, fmt.Errorf("gossip key file %s: %w", cfg.KeyFile, errdefs.ErrNotFound)
			}
			return nil, fmt.Errorf("gossip key file: %w", err)
		}
		keys, err := ParseKeys(cfg.KeyFile, data)
		if err != nil {
			return nil, err
		}
		ring, err := memberlist.NewKeyring(keys[1:], keys[0])
		if err != nil {
			return nil, fmt.Errorf("gossip key file %s: %v: %w", cfg.KeyFile, err, errdefs.ErrInvalid)
		}
		m.ring, m.keyData = ring, data
	}
	return m, nil
}

// Run joins the cluster and keeps the member in it until ctx ends; then it
// leaves gracefully (peers see it "left", not "dead"), within
// Config.LeaveTimeout, and returns. It returns early only when it cannot
// listen (the error wraps errdefs.ErrUnavailable). Joining does not delay
// it: seeds are tried in the background, with backoff, until one answers,
// and again whenever no peer is alive. Calling Run twice is an error
// (errdefs.ErrConflict).
func (m *Member) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return fmt.Errorf("gossip: Run called twice: %w", errdefs.ErrConflict)
	}
	ml, tr, err := m.create()
	if err != nil {
		return err
	}
	local := nodeAddr(ml.LocalNode()) // read once: memberlist changes its Node in place
	m.localAddr.Store(&local)
	m.ml.Store(ml)
	m.tr.Store(tr)
	close(m.ready)
	m.log.Info("gossip started", "name", m.cfg.Name, "addr", m.LocalAddr(), "encrypted", m.ring != nil)

	loops, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){m.pump, m.joinLoop, m.metaLoop, m.keyLoop, m.verifyLoop, m.crossLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(loops)
		}()
	}
	<-ctx.Done()
	stop()
	wg.Wait()
	if !m.crashed.Load() {
		m.leave(ml)
	}
	return nil
}

// create makes the transport and the memberlist.
func (m *Member) create() (*memberlist.Memberlist, *countingTransport, error) {
	mc := m.cfg.memberlistConfig()
	mc.Logger = log.New(logSink{m}, "", 0)
	mc.Keyring = m.ring
	mc.Delegate = delegate{m}
	mc.Events = eventDelegate{m}
	mc.Ping = pingDelegate{m}
	mc.Conflict = conflictDelegate{m}
	mc.Merge = mergeDelegate{m}
	var inner memberlist.NodeAwareTransport = m.cfg.Transport
	if inner == nil {
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{m.cfg.BindAddr},
			BindPort:  m.cfg.BindPort,
			Logger:    mc.Logger,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("gossip: listen on %s: %v: %w",
				net.JoinHostPort(m.cfg.BindAddr, strconv.Itoa(m.cfg.BindPort)), err, errdefs.ErrUnavailable)
		}
		if m.cfg.BindPort == 0 {
			mc.BindPort = nt.GetAutoBindPort()
			if m.cfg.AdvertisePort == 0 {
				mc.AdvertisePort = mc.BindPort
			}
		}
		inner = nt
	}
	tr := newCountingTransport(inner)
	mc.Transport = tr
	ml, err := memberlist.Create(mc)
	if err != nil {
		_ = tr.Shutdown()
		return nil, nil, fmt.Errorf("gossip: start: %v: %w", err, errdefs.ErrUnavailable)
	}
	return ml, tr, nil
}

// leave tells the peers this member is leaving (metadata first, so they
// record "left" rather than "dead"), leaves, and shuts memberlist down.
func (m *Member) leave(ml *memberlist.Memberlist) {
	m.localMu.Lock()
	m.local.Leaving = true
	enc := m.local.Encode()
	m.meta.Store(&enc)
	m.localMu.Unlock()
	if err := ml.UpdateNode(m.cfg.LeaveTimeout); err != nil {
		m.log.Warn("gossip: announcing the leave", "err", err)
	}
	if err := ml.Leave(m.cfg.LeaveTimeout); err != nil {
		m.log.Warn("gossip: leave", "err", err)
	}
	m.shutDown.Store(true)
	if err := ml.Shutdown(); err != nil {
		m.log.Warn("gossip: shutdown", "err", err)
	}
	m.log.Info("gossip stopped: left the cluster")
}

// crash stops memberlist without leaving, as a killed process would (tests).
func (m *Member) crash() {
	m.crashed.Store(true)
	m.shutDown.Store(true)
	if ml := m.ml.Load(); ml != nil {
		_ = ml.Shutdown()
	}
}

// Ready is closed once Run listens (LocalAddr is then known).
func (m *Member) Ready() <-chan struct{} { return m.ready }

// Name is the member's name.
func (m *Member) Name() string { return m.cfg.Name }

// LocalAddr is the address peers reach this member at; the zero value
// before Run listens.
func (m *Member) LocalAddr() netip.AddrPort {
	if a := m.localAddr.Load(); a != nil {
		return *a
	}
	return netip.AddrPort{}
}

func nodeAddr(n *memberlist.Node) netip.AddrPort {
	a, _ := netip.AddrFromSlice(n.Addr)
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}

// Views returns every peer this member knows (itself excluded), sorted by
// name: alive and suspect ones, and dead or left ones for
// Config.ForgetAfter. The slice is the caller's.
func (m *Member) Views() []View {
	m.mu.RLock()
	out := make([]View, 0, len(m.views))
	for _, v := range m.views {
		out = append(out, *v)
	}
	m.mu.RUnlock()
	slices.SortFunc(out, func(a, b View) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Changed receives a value when the views changed since the last receive
// (the signal coalesces: call Views to see what they are). It never
// blocks the member.
func (m *Member) Changed() <-chan struct{} { return m.changed }

// LocalState is what the agent tells its peers about itself.
type LocalState struct {
	StreamUp   bool   // its stream to the aggregator is up
	Containerd Health // containerd's health
}

// SetLocalState updates the member's metadata. It does not block: the new
// metadata is broadcast by Run's goroutine (memberlist's UpdateNode); a
// value equal to the current one is ignored.
func (m *Member) SetLocalState(s LocalState) {
	m.localMu.Lock()
	next := m.local
	next.StreamUp, next.Containerd = s.StreamUp, s.Containerd
	if next == m.local {
		m.localMu.Unlock()
		return
	}
	m.local = next
	enc := next.Encode()
	m.meta.Store(&enc)
	m.localMu.Unlock()
	select {
	case m.metaPoke <- struct{}{}:
	default:
	}
}

// SetIsolated records whether the agent finds itself Isolated (its stream
// down and no peer answering its probes): the self-metric
// vigil_agent_gossip_isolated shows it, so that the node's own /metrics/self
// says so while the aggregator cannot hear of it.
func (m *Member) SetIsolated(on bool) { m.isolated.Store(on) }

// metaLoop broadcasts the local metadata when it changes.
func (m *Member) metaLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.metaPoke:
		}
		m.stats.metaUpdates.Add(1)
		// UpdateNode waits for the broadcast to go out, at most the
		// timeout; the local node's record changes at once either way.
		if err := m.ml.Load().UpdateNode(m.cfg.ProbeInterval * 5); err != nil {
			m.stats.metaUpdateFails.Add(1)
			m.log.Debug("gossip: metadata update not yet broadcast", "err", err)
		}
	}
}

// MaxAddedSeeds bounds the seeds AddSeeds keeps besides the configured
// ones.
const MaxAddedSeeds = 16

// AddSeeds adds seeds ("host[:port]"), e.g. from the aggregator's hello
// reply, and makes the member try them now if it has no alive peer. A
// configured seed is ignored; at most MaxAddedSeeds added ones are kept,
// the most recently added. An invalid seed is an error wrapping
// errdefs.ErrInvalid; the valid ones are added anyway.
func (m *Member) AddSeeds(seeds ...string) error {
	var bad []string
	m.seedMu.Lock()
	for _, s := range seeds {
		if _, _, err := splitSeed(s, 1); err != nil {
			bad = append(bad, fmt.Sprintf("%q: %v", s, err))
			continue
		}
		if slices.Contains(m.cfg.Seeds, s) {
			continue
		}
		// The newest first-hand seeds are the likeliest alive: an added
		// seed moves to the end, and past MaxAddedSeeds the oldest added
		// go (over months of rollouts the hello replies name many pods
		// long gone). Configured seeds always stay.
		if i := slices.Index(m.seeds, s); i >= 0 {
			m.seeds = slices.Delete(m.seeds, i, i+1)
		}
		m.seeds = append(m.seeds, s)
		if added := len(m.seeds) - len(m.cfg.Seeds); added > MaxAddedSeeds {
			n := len(m.cfg.Seeds)
			m.seeds = slices.Delete(m.seeds, n, n+added-MaxAddedSeeds)
		}
	}
	m.seedMu.Unlock()
	select {
	case m.seedPoke <- struct{}{}:
	default:
	}
	if len(bad) > 0 {
		return fmt.Errorf("gossip: seeds %s: %w", strings.Join(bad, ", "), errdefs.ErrInvalid)
	}
	return nil
}

// seedAddrs resolves the seeds and SeedDNS into "ip:port" addresses, this
// member's own address left out.
func (m *Member) seedAddrs(ctx context.Context) []string {
	m.seedMu.Lock()
	seeds := slices.Clone(m.seeds)
	m.seedMu.Unlock()
	if m.cfg.SeedDNS != "" {
		seeds = append(seeds, m.cfg.SeedDNS)
	}
	port := m.cfg.BindPort
	if port == 0 {
		port = DefaultPort
	}
	self := m.LocalAddr()
	var out []string
	for _, s := range seeds {
		host, p, err := splitSeed(s, port)
		if err != nil {
			continue // validated when added
		}
		var addrs []netip.Addr
		if a, err := netip.ParseAddr(host); err == nil {
			addrs = []netip.Addr{a}
		} else {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ips, err := m.cfg.Resolver.LookupIPAddr(rctx, host)
			cancel()
			if err != nil {
				m.log.Warn("gossip: resolving seed", "seed", s, "err", err)
				continue
			}
			for _, ip := range ips {
				if a, ok := netip.AddrFromSlice(ip.IP); ok {
					addrs = append(addrs, a.Unmap())
				}
			}
		}
		for _, a := range addrs {
			ap := netip.AddrPortFrom(a.Unmap(), uint16(p))
			if ap == self {
				continue
			}
			if s := ap.String(); !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out
}

// joinLoop joins the seeds while no peer is alive: at start, after a
// partition that left this member alone, or when seeds are added. It waits
// JoinBackoffInitial after a failure, doubling up to JoinBackoffMax.
//
// It also joins again, every ProbeInterval doubling up to JoinBackoffMax,
// while the peer it joined holds this member's name at another address or
// not alive: the node came back with a new address before its old self was
// declared dead. memberlist ignores the new address until then and does
// not announce it again by itself; a join (a push/pull with a seed) does,
// and DeadNodeReclaimTime lets it take the name of the dead entry.
func (m *Member) joinLoop(ctx context.Context) {
	backoff := m.cfg.JoinBackoffInitial
	conflictBackoff := m.cfg.ProbeInterval
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.seedPoke:
		}
		wait := m.cfg.JoinBackoffMax
		ml := m.ml.Load()
		conflicted := m.selfConflict.Swap(false)
		if ml.NumMembers() <= 1 || conflicted {
			if seeds := m.seedAddrs(ctx); len(seeds) > 0 {
				n, err := ml.Join(seeds)
				if n > 0 {
					m.stats.joins.Add(1)
					m.log.Info("gossip: joined", "contacted", n, "seeds", len(seeds), "members", ml.NumMembers())
					backoff = m.cfg.JoinBackoffInitial
				} else {
					m.stats.joinFailures.Add(1)
					m.log.Warn(joinFailure(err), "seeds", seeds, "in", backoff, "err", err)
					wait = backoff
					backoff = min(2*backoff, m.cfg.JoinBackoffMax)
				}
			}
		}
		if m.selfConflict.Load() {
			wait = min(wait, conflictBackoff)
			conflictBackoff = min(2*conflictBackoff, m.cfg.JoinBackoffMax)
		} else if !conflicted {
			conflictBackoff = m.cfg.ProbeInterval
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
	}
}

// maxVerify bounds the pings verifyLoop sends per round.
const maxVerify = 16

// verifyLoop pings, once per ProbeInterval, the peers this member holds
// suspect (at most maxVerify per round, at once), and sees those that
// answer alive again. memberlist tells nobody when a suspect refutes (its
// alive message changes no metadata, so no event), and its own next probe
// of the peer comes only after it has probed every other member; without
// this, a peer refuted long ago would stay suspect in the view until the
// suspicion expires (see expire). A peer that does not answer stays
// suspect until memberlist declares it dead or the suspicion expires.
func (m *Member) verifyLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var suspects []View
		m.mu.RLock()
		for _, v := range m.views {
			if v.State == StateSuspect && v.Addr.IsValid() && len(suspects) < maxVerify {
				suspects = append(suspects, *v)
			}
		}
		m.mu.RUnlock()
		ml := m.ml.Load()
		var wg sync.WaitGroup
		for _, v := range suspects {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := ml.Ping(v.Name, net.UDPAddrFromAddrPort(v.Addr)); err == nil {
					m.post(event{kind: evAck, name: v.Name})
				}
			}()
		}
		wg.Wait() // each Ping returns within ProbeTimeout
	}
}

// ProbePeers pings up to k of the peers this member holds alive, at once
// and directly (as memberlist's own probes do), and returns how many
// answered. It blocks for at most ProbeTimeout. The agent calls it when
// its stream is down to tell Isolated from AggregatorPartitioned at once
// (see Local): the view alone notices isolation only once this member's
// own probes have suspected every peer, which takes tens of seconds
// (memberlist stretches its probe interval while its probes fail). Before
// Run listens, and with no alive peer, it returns 0.
func (m *Member) ProbePeers(k int) int {
	ml := m.ml.Load()
	if ml == nil || k <= 0 {
		return 0
	}
	var peers []View
	m.mu.RLock()
	for _, v := range m.views { // map order: a different sample each time
		if v.State == StateAlive && v.Addr.IsValid() && len(peers) < k {
			peers = append(peers, *v)
		}
	}
	m.mu.RUnlock()
	var answered atomic.Int32
	var wg sync.WaitGroup
	for _, v := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := ml.Ping(v.Name, net.UDPAddrFromAddrPort(v.Addr)); err == nil {
				answered.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(answered.Load())
}

// keyLoop reloads the key file every KeyReloadInterval.
func (m *Member) keyLoop(ctx context.Context) {
	if m.ring == nil {
		return
	}
	t := time.NewTicker(m.cfg.KeyReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = m.ReloadKeys() // logged and counted
		}
	}
}

// ReloadKeys reads the key file again and changes the keyring to match it
// (see the package documentation for the rotation procedure). A file that
// cannot be read or parsed changes nothing; its error is returned, logged
// and counted. Without a key file it does nothing.
func (m *Member) ReloadKeys() error {
	if m.ring == nil {
		return nil
	}
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	data, err := os.ReadFile(m.cfg.KeyFile)
	if err == nil && bytes.Equal(data, m.keyData) {
		return nil
	}
	var keys [][]byte
	if err == nil {
		keys, err = ParseKeys(m.cfg.KeyFile, data)
	} else {
		err = fmt.Errorf("gossip key file: %w", err)
	}
	if err == nil {
		_, err = applyKeys(m.ring, keys)
	}
	if err != nil {
		m.stats.keyReloadErrors.Add(1)
		m.log.Error("gossip: key file not applied; the keys in use stay", "err", err)
		return err
	}
	m.keyData = data
	m.stats.keyReloads.Add(1)
	m.log.Info("gossip: keys reloaded", "file", m.cfg.KeyFile, "keys", len(keys), "primary", keyID(keys[0]))
	return nil
}

// keyID names a key in logs without revealing it.
func keyID(k []byte) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:4])
}

// Traffic is what the member's transport carried so far.
func (m *Member) Traffic() Traffic {
	if tr := m.tr.Load(); tr != nil {
		return tr.traffic()
	}
	return Traffic{}
}

// joinFailure is the log message of a join that reached no seed: one that
// answered with what this member cannot decrypt, or could not decrypt what
// this member sent, answered all the same, and the gossip key is what is
// wrong, not the seeds.
func joinFailure(err error) string {
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "no installed keys could decrypt") || strings.Contains(msg, "encryption is configured") ||
			strings.Contains(msg, "remote state is encrypted") {
			return "gossip: a seed answered, but its gossip key and this member's do not match (--gossip-key-file); trying again"
		}
	}
	return "gossip: no seed answered; trying again"
}
