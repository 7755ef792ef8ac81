package aggregator

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/remediation"
	"github.com/vigilhq/vigil/internal/store"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Fleet-wide reads. With replicas, each one holds a part of the fleet; a
// read of the Vigil API or /api/v1 on any replica asks the others (those
// registered under replicas/ in the store) for their part, each within
// Config.PeerTimeout, and merges. A replica that does not answer leaves
// the result partial: gRPC answers carry the header PartialHeader, HTTP
// answers the header Vigil-Partial, naming the replicas missing and why.
// The calls to the others carry LocalScopeHeader, so that they answer
// from their own fleet only.
const (
	// LocalScopeHeader (gRPC metadata): answer from this replica's nodes
	// only (a replica asking the others sets it).
	LocalScopeHeader = "vigil-scope"
	// PartialHeader (gRPC header metadata): the replicas that did not
	// answer a fleet-wide read, and why.
	PartialHeader = "vigil-partial"
	// partialHTTPHeader is PartialHeader on /api/v1.
	partialHTTPHeader = "Vigil-Partial"
)

// peerClients holds one gRPC connection per other replica.
type peerClients struct {
	r       *replicas
	creds   credentials.TransportCredentials
	timeout time.Duration
	m       *selfMetrics

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // by address
}

func newPeerClients(r *replicas, tlsCfg *tls.Config, insecureMode bool, timeout time.Duration, m *selfMetrics) *peerClients {
	p := &peerClients{r: r, timeout: timeout, m: m, conns: map[string]*grpc.ClientConn{}}
	switch {
	case tlsCfg != nil:
		p.creds = credentials.NewTLS(tlsCfg)
	case insecureMode:
		p.creds = insecure.NewCredentials()
	}
	return p
}

func (p *peerClients) conn(addr string) (vigilv1.VigilClient, error) {
	if p.creds == nil {
		return nil, fmt.Errorf("no client credentials for the other replicas (the aggregator's --tls-cert/--tls-key serve as its client certificate): %w", errdefs.ErrUnavailable)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conns[addr]; c != nil {
		return vigilv1.NewVigilClient(c), nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(p.creds))
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return vigilv1.NewVigilClient(c), nil
}

// close closes every connection.
func (p *peerClients) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
		delete(p.conns, a)
	}
}

// peerAnswer is one replica's answer to a fan-out.
type peerAnswer[T any] struct {
	id  string
	v   T
	err error
}

// fanOut calls fn on every other replica at once, each within the peer
// timeout, and returns the answers and the description of the failures
// ("" when all answered). A replica that holds nodes but is not in the
// registry cannot be asked: it is a failure too.
func fanOut[T any](ctx context.Context, p *peerClients, fn func(context.Context, vigilv1.VigilClient) (T, error)) ([]T, string) {
	peers := p.r.peerList()
	unregistered := p.r.unregisteredHolders()
	if len(peers) == 0 {
		return nil, unregistered
	}
	ch := make(chan peerAnswer[T], len(peers))
	for id, addr := range peers {
		go func() {
			cctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, LocalScopeHeader, "local"), p.timeout)
			defer cancel()
			c, err := p.conn(addr)
			var v T
			if err == nil {
				v, err = fn(cctx, c)
			}
			ch <- peerAnswer[T]{id: id, v: v, err: err}
		}()
	}
	var out []T
	var failed []string
	for range peers {
		a := <-ch
		if a.err != nil {
			p.m.peerErrors.WithLabelValues(a.id).Inc()
			failed = append(failed, fmt.Sprintf("replica %s (%s): %v", a.id, peers[a.id], a.err))
			continue
		}
		out = append(out, a.v)
	}
	if unregistered != "" {
		failed = append(failed, unregistered)
	}
	sort.Strings(failed)
	return out, strings.Join(failed, "; ")
}

// localOnly reports whether a call asks for this replica's nodes only.
func localOnly(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(LocalScopeHeader)) > 0
}

// stateRank orders the copies of a node that two replicas have: the one
// holding its stream wins over one that saw it go down.
func stateRank(s vigilv1.NodeState) int {
	switch s {
	case vigilv1.NodeState_NODE_STATE_UP:
		return 3
	case vigilv1.NodeState_NODE_STATE_STALE:
		return 2
	case vigilv1.NodeState_NODE_STATE_DOWN:
		return 1
	}
	return 0
}

// mergeNodes merges node lists, one entry per name, sorted by name.
func mergeNodes(lists ...[]*vigilv1.Node) []*vigilv1.Node {
	by := map[string]*vigilv1.Node{}
	for _, l := range lists {
		for _, n := range l {
			old := by[n.GetName()]
			if old == nil || stateRank(n.GetState()) > stateRank(old.GetState()) ||
				(stateRank(n.GetState()) == stateRank(old.GetState()) && n.GetLastSeen().AsTime().After(old.GetLastSeen().AsTime())) {
				by[n.GetName()] = n
			}
		}
	}
	out := make([]*vigilv1.Node, 0, len(by))
	for _, n := range by {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *vigilv1.Node) int { return cmp.Compare(a.GetName(), b.GetName()) })
	return out
}

// fleetNodes is every node of the fleet: this replica's and the others'.
func (a *API) fleetNodes(ctx context.Context) ([]*vigilv1.Node, string) {
	local := a.fleet.Nodes()
	if a.peers == nil || localOnly(ctx) {
		return local, ""
	}
	lists, partial := fanOut(ctx, a.peers, func(ctx context.Context, c vigilv1.VigilClient) ([]*vigilv1.Node, error) {
		resp, err := c.ListNodes(ctx, &vigilv1.ListNodesRequest{})
		return resp.GetNodes(), err
	})
	return mergeNodes(append(lists, local)...), partial
}

// fleetContainers is every container matching q (its filters; its paging
// is applied by the caller) of the fleet, sorted by node, namespace, id.
// A node two replicas report (one saw it go down, the other holds it) is
// taken from the one whose copy comes first: this replica's.
func (a *API) fleetContainers(ctx context.Context, q *vigilv1.ListContainersRequest) ([]*vigilv1.NodeContainer, string) {
	local := a.fleet.Containers(q)
	if a.peers == nil || localOnly(ctx) {
		return local, ""
	}
	peerQ := &vigilv1.ListContainersRequest{
		Node: q.GetNode(), Namespace: q.GetNamespace(), Pod: q.GetPod(), State: q.GetState(), Health: q.GetHealth(),
		IncludeSandboxes: q.GetIncludeSandboxes(), IncludeProbeOutput: q.GetIncludeProbeOutput(), PageSize: MaxPageSize,
	}
	lists, partial := fanOut(ctx, a.peers, func(ctx context.Context, c vigilv1.VigilClient) ([]*vigilv1.NodeContainer, error) {
		var all []*vigilv1.NodeContainer
		req := cloneQuery(peerQ)
		for {
			resp, err := c.ListContainers(ctx, req)
			if err != nil {
				return nil, err
			}
			all = append(all, resp.GetContainers()...)
			if resp.GetNextPageToken() == "" {
				return all, nil
			}
			req.PageToken = resp.GetNextPageToken()
		}
	})
	nodesSeen := map[string]bool{}
	for _, nc := range local {
		nodesSeen[nc.GetNode()] = true
	}
	out := local
	for _, l := range lists {
		fromThis := map[string]bool{}
		for _, nc := range l {
			if nodesSeen[nc.GetNode()] {
				continue
			}
			fromThis[nc.GetNode()] = true
			out = append(out, nc)
		}
		for n := range fromThis {
			nodesSeen[n] = true
		}
	}
	slices.SortStableFunc(out, func(a, b *vigilv1.NodeContainer) int {
		return cmp.Or(cmp.Compare(a.GetNode(), b.GetNode()), cmp.Compare(a.GetContainer().GetNamespace(), b.GetContainer().GetNamespace()),
			cmp.Compare(a.GetContainer().GetId(), b.GetContainer().GetId()))
	})
	return out, partial
}

func cloneQuery(q *vigilv1.ListContainersRequest) *vigilv1.ListContainersRequest {
	return proto.Clone(q).(*vigilv1.ListContainersRequest)
}

func isNotFound(err error) bool { return errors.Is(err, errdefs.ErrNotFound) }

// fleetContainer finds one container on this replica, else on the others.
func (a *API) fleetContainer(ctx context.Context, node, namespace, id string) (*vigilv1.NodeContainer, error) {
	c, err := a.fleet.Container(node, namespace, id)
	if err == nil || a.peers == nil || localOnly(ctx) {
		return c, err
	}
	found, partial := fanOut(ctx, a.peers, func(ctx context.Context, cl vigilv1.VigilClient) (*vigilv1.NodeContainer, error) {
		resp, err := cl.GetContainer(ctx, &vigilv1.GetContainerRequest{Node: node, Namespace: namespace, Id: id})
		return resp.GetContainer(), err
	})
	for _, f := range found {
		if f != nil {
			return f, nil
		}
	}
	if partial != "" && !strings.Contains(partial, "NotFound") {
		return nil, fmt.Errorf("%w (not every replica answered: %s)", err, partial)
	}
	return nil, err
}

// setPartial tells a gRPC caller which replicas did not answer.
func setPartial(ctx context.Context, partial string) {
	if partial != "" {
		_ = grpcSetHeader(ctx, metadata.Pairs(PartialHeader, partial))
	}
}

var grpcSetHeader = grpc.SetHeader

// peerFleetView is the remediation engine's fleet view with replicas: a
// target on a node another replica holds is looked up there (the command
// is written to the node's outbox, which that replica delivers).
type peerFleetView struct {
	local *fleetView
	peers *peerClients
	size  sizeCache
}

type sizeCache struct {
	mu sync.Mutex
	s  remediation.FleetSize
	at time.Time
}

var _ remediation.FleetView = (*peerFleetView)(nil)

// Size implements remediation.FleetView: this replica's count plus the
// others' (their nodes and containers, sandboxes included: the listing of
// nodes carries a count of all), at most a second old.
func (v *peerFleetView) Size() remediation.FleetSize {
	v.size.mu.Lock()
	defer v.size.mu.Unlock()
	if time.Since(v.size.at) < sizeFor {
		return v.size.s
	}
	s := v.local.Size()
	lists, _ := fanOut(context.Background(), v.peers, func(ctx context.Context, c vigilv1.VigilClient) ([]*vigilv1.Node, error) {
		resp, err := c.ListNodes(ctx, &vigilv1.ListNodesRequest{})
		return resp.GetNodes(), err
	})
	local := map[string]bool{}
	for _, n := range v.local.f.list() {
		local[n.name] = true
	}
	for _, l := range lists {
		for _, n := range l {
			if local[n.GetName()] {
				continue
			}
			local[n.GetName()] = true
			s.Nodes++
			s.Targets += int(n.GetContainerCount())
		}
	}
	v.size.s, v.size.at = s, time.Now()
	return s
}

// Lookup implements remediation.FleetView: this replica's fleet first,
// then the replica that has the node. A host interface of a node held
// elsewhere is not known here (the API does not carry links): not found.
func (v *peerFleetView) Lookup(ref remediation.TargetRef) (remediation.TargetState, error) {
	st, err := v.local.Lookup(ref)
	if err == nil || !isNotFound(err) || v.local.f.get(ref.Node) != nil || ref.Container == "" {
		return st, err
	}
	ctx := context.Background()
	type found struct {
		up         bool
		containers []*vigilv1.NodeContainer
	}
	answers, _ := fanOut(ctx, v.peers, func(ctx context.Context, c vigilv1.VigilClient) (found, error) {
		var f found
		nodes, err := c.ListNodes(ctx, &vigilv1.ListNodesRequest{})
		if err != nil {
			return f, err
		}
		i := slices.IndexFunc(nodes.GetNodes(), func(n *vigilv1.Node) bool { return n.GetName() == ref.Node })
		if i < 0 {
			return f, nil
		}
		f.up = nodes.GetNodes()[i].GetState() != vigilv1.NodeState_NODE_STATE_DOWN
		resp, err := c.ListContainers(ctx, &vigilv1.ListContainersRequest{Node: ref.Node, IncludeSandboxes: true, PageSize: MaxPageSize})
		if err != nil {
			return f, err
		}
		f.containers = resp.GetContainers()
		if f.containers == nil {
			f.containers = []*vigilv1.NodeContainer{}
		}
		return f, nil
	})
	for _, a := range answers {
		if a.containers == nil {
			continue
		}
		var match []*vigilv1.Container
		for _, nc := range a.containers {
			if remediation.ContainerMatches(ref, ref.Node, nc.GetContainer()) {
				match = append(match, nc.GetContainer())
			}
		}
		if len(match) > 1 && ref.Pod != "" {
			var running []*vigilv1.Container
			for _, c := range match {
				if c.GetState() == vigilv1.ContainerState_CONTAINER_STATE_RUNNING {
					running = append(running, c)
				}
			}
			match = running
		}
		switch len(match) {
		case 0:
			return remediation.TargetState{}, fmt.Errorf("no container %s in the fleet: %w", ref, errdefs.ErrNotFound)
		case 1:
			if ref.Interface != "" {
				return remediation.TargetState{}, fmt.Errorf("container %s is on a node another replica holds: its interfaces are not known here: %w", ref, errdefs.ErrNotFound)
			}
			return remediation.ContainerTargetState(ref, ref.Node, match[0], a.up), nil
		default:
			return remediation.TargetState{}, fmt.Errorf("%d containers match %s: name the containerd namespace: %w", len(match), ref, errdefs.ErrInvalid)
		}
	}
	return st, err
}

// historyWatchPrefix is the shared history's prefix a fleet-wide watch
// of node (all nodes: "") reads.
func historyWatchPrefix(node string) string {
	if node == "" {
		return historyPrefix
	}
	return historyPrefix + node + "/"
}

// sharedRev is the shared store's revision now, for a WatchEvents stream
// to watch the other replicas' changes after: read before the stream
// tells its client it is subscribed (and before it replays the history),
// so that no change written in between is missed.
func (a *API) sharedRev(ctx context.Context, node string) (int64, error) {
	_, rev, err := a.history.st.List(ctx, historyWatchPrefix(node), 1)
	return rev, err
}

// remoteEvents streams the changes the other replicas write to the event
// history (their nodes' events, their remediations' decisions and ends)
// after revision afterRev (sharedRev), for a fleet-wide WatchEvents: the
// history is in the shared store, and each replica writes its own nodes'
// events there within about historyFlushEvery. Each call has a watch of
// its own, read at once: a change is queued for the stream in a buffer of
// a.watchBuffer, and one that finds it full marks lag (feedShared) and
// ends the feed and its watch, so nothing piles up behind a slow watcher
// (in the etcd client, whose buffer per watch has no bound). The channel
// closes then, when ctx ends, or when the watch fails (afterRev compacted
// away included: the caller's stream then ends with Unavailable and the
// client watches again, with since to miss nothing).
func (a *API) remoteEvents(ctx context.Context, node, namespace string, afterRev int64, lag *watchLag) <-chan *vigilv1.WatchEventsResponse {
	prefix := historyWatchPrefix(node)
	out := make(chan *vigilv1.WatchEventsResponse, a.watchBuffer)
	go func() {
		defer close(out)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel() // ends the store's watch when the feed ends first
		for resp := range a.history.st.Watch(wctx, prefix, afterRev) {
			if resp.Err != nil {
				return
			}
			for _, ev := range resp.Events {
				if ev.Type != store.EventPut {
					continue
				}
				m := &vigilv1.WatchEventsResponse{}
				if proto.Unmarshal(ev.KV.Value, m) != nil {
					continue
				}
				if namespace != "" && eventNamespace(m) != namespace {
					continue
				}
				select {
				case out <- m:
				default:
					lag.mark(feedShared, m)
					return
				}
			}
		}
	}()
	return out
}

// sentKeys remembers the changes a WatchEvents stream sent (bounded), so
// that one that arrives both live and through the shared history is sent
// once.
type sentKeys struct {
	cur, prev map[string]bool
}

const sentKeysMax = 4096

func (s *sentKeys) seen(k string) bool {
	if s.cur[k] || s.prev[k] {
		return true
	}
	if s.cur == nil || len(s.cur) >= sentKeysMax {
		s.prev, s.cur = s.cur, make(map[string]bool, sentKeysMax)
	}
	s.cur[k] = true
	return false
}
