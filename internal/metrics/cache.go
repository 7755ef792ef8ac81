package metrics

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/vigilhq/vigil/internal/container"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// NodeCache serves one node's exposition again and again (the agent's
// local /metrics) and renders only what changed since the last Write: each
// container's series are kept as bytes with a fingerprint of what they were
// rendered from (the container's protocol form and the values of its
// resource sample), and a container is rendered again only when its
// fingerprint differs, the way the aggregator keeps a node's series until
// the node changes. Network and node series are rendered on every Write
// (a few per interface; their counters change every cycle anyway).
//
// A Write produces exactly what WriteNode would for the same input.
// Containers that are no longer in the input are forgotten at once. The
// zero value is ready to use; a NodeCache is safe for concurrent use
// (a scrape holds it while it writes; see Write).
type NodeCache struct {
	mu         sync.Mutex
	node       string
	containers map[identity]*cachedContainer
	gen        uint64
	list       []*cachedContainer // this Write's containers, sorted
	byID       map[identity]*vigilv1.Container
	one        scratch // one container's rendering
	rest       scratch // network and node series
	fp         []byte
	bw         *bufio.Writer
	// The counters of CacheStats, read without the lock (a scrape may
	// hold it for as long as its scraper takes to read).
	writes, rendered, reused, uncached atomic.Uint64
}

// CacheStats counts a NodeCache's work since it was made.
type CacheStats struct {
	// Writes is the number of Write calls.
	Writes uint64
	// Rendered and Reused count containers rendered again and containers
	// whose kept series were written as they were.
	Rendered, Reused uint64
	// Uncached counts Writes that found the cache held by another and
	// rendered the node on their own.
	Uncached uint64
}

type cachedContainer struct {
	id    identity
	gen   uint64
	fp    []byte
	parts [numFamilies][]byte // only container families are filled
	lines int
}

// Stats returns what the cache did so far.
func (c *NodeCache) Stats() CacheStats {
	return CacheStats{Writes: c.writes.Load(), Rendered: c.rendered.Load(), Reused: c.reused.Load(), Uncached: c.uncached.Load()}
}

// Write writes the node's exposition (text format 0.0.4) to w and returns
// the number of series written. in is read as RenderNode reads it.
//
// The cache is held while it writes to w, through a 32 KiB buffer: no copy
// of the whole exposition (about 200 KB at 100 containers) is made, and
// none is kept between scrapes. A scrape that finds the cache held by
// another one (a second Prometheus, or a scraper that reads slowly) does
// not wait for it: it renders the node on its own, uncached (counted in
// CacheStats.Uncached), and produces the same exposition.
func (c *NodeCache) Write(w io.Writer, in NodeInput) (int, error) {
	if !c.mu.TryLock() {
		r := RenderNode(in)
		bw := bufio.NewWriterSize(w, 32<<10)
		_, err := WriteFamilies(bw, []*Rendered{r})
		c.writes.Add(1)
		c.uncached.Add(1)
		return r.Series(), err
	}
	defer c.mu.Unlock()
	series := c.update(in)
	if c.bw == nil {
		c.bw = bufio.NewWriterSize(w, 32<<10)
	} else {
		c.bw.Reset(w)
	}
	err := c.writeTo(c.bw)
	c.bw.Reset(nil) // keep no reference to w
	return series, err
}

// update renders what changed since the last Write and makes this
// Write's list of containers; c.mu is held. It returns the number of
// series of the exposition.
func (c *NodeCache) update(in NodeInput) int {
	c.writes.Add(1)
	c.gen++
	if c.containers == nil || c.node != in.Name {
		c.containers = make(map[identity]*cachedContainer)
		c.node = in.Name
	}
	node := appendLabelValue(nil, in.Name)

	// One container per identity, sandboxes excluded (as render does).
	clear(c.byID)
	if c.byID == nil {
		c.byID = make(map[identity]*vigilv1.Container, len(in.Containers))
	}
	for _, ct := range in.Containers {
		if ct == nil || isSandbox(ct) {
			continue
		}
		id := identityOf(ct)
		if cur, ok := c.byID[id]; !ok || better(ct, cur) {
			c.byID[id] = ct
		}
	}
	c.list = c.list[:0]
	series := 0
	for id, ct := range c.byID {
		e := c.containers[id]
		if e == nil {
			e = &cachedContainer{id: id}
			c.containers[id] = e
		}
		e.gen = c.gen
		var sm *vigilv1.ResourceSample
		if isActive(ct) {
			sm = in.Samples[container.Key{Namespace: ct.GetNamespace(), ID: ct.GetId()}]
		}
		fp := appendContainerValues(c.fp[:0], ct)
		fp = appendSampleValues(fp, sm)
		c.fp = fp
		if e.fp == nil || !bytes.Equal(fp, e.fp) {
			c.renderContainer(e, node, ct, sm)
			e.fp = append(e.fp[:0], fp...)
			c.rendered.Add(1)
		} else {
			c.reused.Add(1)
		}
		series += e.lines
		c.list = append(c.list, e)
	}
	for id, e := range c.containers {
		if e.gen != c.gen {
			delete(c.containers, id)
		}
	}
	clear(c.byID) // keep no reference to in's containers
	slices.SortFunc(c.list, func(a, b *cachedContainer) int { return compareIdentity(a.id, b.id) })

	c.rest.reset()
	c.rest.containerNetwork(in, node)
	c.rest.nodeSeries(in, node)
	return series + c.rest.lines
}

func (c *NodeCache) renderContainer(e *cachedContainer, node []byte, ct *vigilv1.Container, sm *vigilv1.ResourceSample) {
	c.one.reset()
	c.one.lb = appendIdentityLabels(c.one.lb[:0], node, e.id)
	ch := chosen{id: e.id, c: ct, labels: c.one.lb}
	c.one.container(&ch, sm)
	for f := range c.one.parts {
		e.parts[f] = append(e.parts[f][:0], c.one.parts[f]...)
	}
	e.lines = c.one.lines
}

func (c *NodeCache) writeTo(bw *bufio.Writer) error {
	for f := range numFamilies {
		header := len(c.rest.parts[f]) > 0
		for _, e := range c.list {
			if len(e.parts[f]) > 0 {
				header = true
				break
			}
		}
		if !header {
			continue
		}
		if _, err := writeHeader(bw, f); err != nil {
			return err
		}
		for _, e := range c.list {
			if _, err := bw.Write(e.parts[f]); err != nil {
				return err
			}
		}
		if _, err := bw.Write(c.rest.parts[f]); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func (s *scratch) reset() {
	for i := range s.parts {
		s.parts[i] = s.parts[i][:0]
	}
	s.lines = 0
}

// appendContainerValues appends every field of c that container() renders
// (identity, image, state, counters, backoff, last exit, health status and
// blame) and nothing else: labels, probe results and timestamps that change
// without changing a series do not cause a rendering.
// TestNodeCacheFollowsEveryRenderedField changes each of them.
func appendContainerValues(b []byte, c *vigilv1.Container) []byte {
	str := func(v string) {
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	u := func(v uint64) { b = binary.AppendUvarint(b, v) }
	flag := func(v bool) {
		if v {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	str(c.GetId())
	str(c.GetNamespace())
	p := c.GetPod()
	flag(p != nil)
	str(p.GetNamespace())
	str(p.GetName())
	str(p.GetContainerName())
	flag(p.GetSandbox())
	str(c.GetImage())
	str(c.GetImageDigest())
	u(uint64(c.GetState()))
	k := c.GetCounters()
	u(k.GetOomEventsTotal())
	u(k.GetRestartsTotal())
	u(k.GetProbeFailuresTotal())
	u(uint64(len(k.GetExits())))
	for _, e := range k.GetExits() {
		u(uint64(e.GetReason()))
		u(uint64(e.GetCode()))
		u(e.GetCount())
	}
	bo := c.GetBackoff()
	u(uint64(bo.GetCurrentDelay().GetSeconds()))
	u(uint64(bo.GetCurrentDelay().GetNanos()))
	flag(bo.GetCrashLooping())
	flag(bo.GetGaveUp())
	flag(c.GetLastExit() != nil)
	u(uint64(c.GetLastExit().GetReason()))
	u(uint64(c.GetHealth().GetStatus()))
	u(uint64(c.GetHealth().GetBlame()))
	return b
}

// appendSampleValues appends every value of sm that a series is rendered
// from (all but its key and timestamp, which changes every cycle), or one
// zero byte for no sample. TestSampleFingerprintCoversEveryField checks
// that a change of any other field changes the result.
func appendSampleValues(b []byte, sm *vigilv1.ResourceSample) []byte {
	if sm == nil {
		return append(b, 0)
	}
	b = append(b, 1)
	f := func(v float64) { b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v)) }
	u := func(v uint64) { b = binary.LittleEndian.AppendUint64(b, v) }
	f(sm.GetCpuUsageSeconds())
	f(sm.GetCpuUserSeconds())
	f(sm.GetCpuSystemSeconds())
	u(sm.GetCpuCfsPeriods())
	u(sm.GetCpuCfsThrottledPeriods())
	f(sm.GetCpuCfsThrottledSeconds())
	u(sm.GetMemoryUsageBytes())
	u(sm.GetMemoryWorkingSetBytes())
	u(sm.GetMemoryRssBytes())
	u(sm.GetMemoryCacheBytes())
	u(sm.GetMemoryLimitBytes())
	u(sm.GetMemoryFailcnt())
	u(sm.GetOomKills())
	u(sm.GetPidsCurrent())
	u(sm.GetPidsLimit())
	u(sm.GetBlkioReadBytes())
	u(sm.GetBlkioWriteBytes())
	u(sm.GetBlkioReadOps())
	u(sm.GetBlkioWriteOps())
	u(sm.GetCpuCfsQuotaUs())
	u(sm.GetCpuCfsPeriodUs())
	u(sm.GetCpuShares())
	u(sm.GetMemorySwapBytes())
	u(sm.GetMemoryReservationBytes())
	u(sm.GetMemoryHighEvents())
	u(sm.GetMemoryOomEvents())
	u(sm.GetFsUsageBytes())
	return b
}
