package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Self-metrics: the agent's own counters, gauges and histograms (what its
// collection, probes, stream and restarts cost and did), written in the text
// exposition format. They are kept here rather than in client_golang's
// registry because the agent runs on every node under a memory goal: the
// registry, its Go and process collectors and what they link (expfmt,
// client_model, procfs, expvar) made the agent's binary 0.8 MB larger, and on
// a kernel that maps the binary in large folios that is as much resident
// memory (docs/benchmarks.md#agent-memory). The exposition is the same: the
// same names, types, labels and buckets, checked with Prometheus's own parser
// in the tests.

// Type is the type of a self-metric family.
type Type uint8

// The family types of the text format that self-metrics use.
const (
	CounterType Type = iota + 1
	GaugeType
	HistogramType
)

func (t Type) String() string {
	switch t {
	case CounterType:
		return "counter"
	case GaugeType:
		return "gauge"
	case HistogramType:
		return "histogram"
	}
	return "untyped"
}

// Desc describes one self-metric family: its name, help, type and label
// names. Descs are made once, at start-up; NewDesc panics on a name or label
// name the text format does not allow, a programming error.
type Desc struct {
	name   string
	typ    Type
	labels []string
	header string // the # HELP and # TYPE lines
}

// NewDesc returns the description of a family.
func NewDesc(name, help string, typ Type, labels ...string) *Desc {
	if !validMetricName(name) {
		panic(fmt.Sprintf("metrics: invalid metric name %q", name))
	}
	for _, l := range labels {
		if !validLabelName(l) || strings.HasPrefix(l, "__") || (typ == HistogramType && l == "le") {
			panic(fmt.Sprintf("metrics: %s: invalid label name %q", name, l))
		}
	}
	help = strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(help)
	return &Desc{
		name:   name,
		typ:    typ,
		labels: slices.Clone(labels),
		header: "# HELP " + name + " " + help + "\n# TYPE " + name + " " + typ.String() + "\n",
	}
}

func validMetricName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9') {
			return false
		}
	}
	return s != ""
}

func validLabelName(s string) bool {
	return validMetricName(s) && !strings.Contains(s, ":")
}

// A Collector writes its families' samples into a scrape.
type Collector interface {
	Collect(w *Writer)
}

// CollectorFunc is a function that is a Collector.
type CollectorFunc func(w *Writer)

// Collect calls f(w).
func (f CollectorFunc) Collect(w *Writer) { f(w) }

// A Writer gathers the samples of one scrape, grouped by family.
type Writer struct {
	fams map[*Desc][]byte
	err  error
}

// Sample adds one sample of d with the given label values (as many as d has
// label names; a mismatch drops the sample and is reported by the scrape).
// For counters and gauges.
func (w *Writer) Sample(d *Desc, v float64, labelValues ...string) {
	b, ok := w.family(d, labelValues)
	if !ok {
		return
	}
	b = appendSeries(b, d.name, "", d.labels, labelValues, "", "")
	b = append(b, ' ')
	b = appendFloat(b, v)
	w.fams[d] = append(b, '\n')
}

// histogram adds the series of histogram h (a family member of d).
func (w *Writer) histogram(d *Desc, h *histogramData, labelValues []string) {
	b, ok := w.family(d, labelValues)
	if !ok {
		return
	}
	var cum uint64
	for i, upper := range h.upper {
		cum += h.counts[i]
		b = appendSeries(b, d.name, "_bucket", d.labels, labelValues, "le", string(appendFloat(nil, upper)))
		b = append(b, ' ')
		b = appendUint(b, cum)
		b = append(b, '\n')
	}
	b = appendSeries(b, d.name, "_bucket", d.labels, labelValues, "le", "+Inf")
	b = append(b, ' ')
	b = appendUint(b, h.count)
	b = append(b, '\n')
	b = appendSeries(b, d.name, "_sum", d.labels, labelValues, "", "")
	b = append(b, ' ')
	b = appendFloat(b, h.sum)
	b = append(b, '\n')
	b = appendSeries(b, d.name, "_count", d.labels, labelValues, "", "")
	b = append(b, ' ')
	b = appendUint(b, h.count)
	w.fams[d] = append(b, '\n')
}

// family returns the family's samples so far (its header at first), or
// records a problem and returns false when labelValues do not match its
// label names.
func (w *Writer) family(d *Desc, labelValues []string) ([]byte, bool) {
	if len(labelValues) != len(d.labels) {
		w.fail(fmt.Errorf("%s: %d label values for %d labels", d.name, len(labelValues), len(d.labels)))
		return nil, false
	}
	if w.fams == nil {
		w.fams = make(map[*Desc][]byte)
	}
	b, ok := w.fams[d]
	if !ok {
		b = append(b, d.header...)
	}
	return b, true
}

func (w *Writer) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

func appendUint(b []byte, v uint64) []byte {
	return strconv.AppendUint(b, v, 10)
}

// appendSeries appends name+suffix and its labels, plus an extra label
// (le) when extraName is set.
func appendSeries(b []byte, name, suffix string, labels, values []string, extraName, extraValue string) []byte {
	b = append(b, name...)
	b = append(b, suffix...)
	if len(labels) == 0 && extraName == "" {
		return b
	}
	b = append(b, '{')
	for i, l := range labels {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, l...)
		b = append(b, `="`...)
		b = appendLabelValue(b, values[i])
		b = append(b, '"')
	}
	if extraName != "" {
		if len(labels) > 0 {
			b = append(b, ',')
		}
		b = append(b, extraName...)
		b = append(b, `="`...)
		b = append(b, extraValue...)
		b = append(b, '"')
	}
	return append(b, '}')
}

// Registry holds the collectors of a process's self-metrics.
type Registry struct {
	mu         sync.Mutex
	collectors []Collector
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{} }

// Register adds collectors.
func (r *Registry) Register(cs ...Collector) {
	r.mu.Lock()
	r.collectors = append(r.collectors, cs...)
	r.mu.Unlock()
}

// WriteTo writes every registered family in the text format, families in
// name order. It writes what it could collect and returns the first problem
// (a family with a bad sample, or a family that two collectors both wrote
// under different descriptions).
func (r *Registry) WriteTo(out io.Writer) (int64, error) {
	var w Writer
	r.Collect(&w)
	descs := make([]*Desc, 0, len(w.fams))
	for d := range w.fams {
		descs = append(descs, d)
	}
	sort.Slice(descs, func(i, j int) bool { return descs[i].name < descs[j].name })
	bw := bufio.NewWriter(out)
	var n int64
	for i, d := range descs {
		if i > 0 && descs[i-1].name == d.name {
			w.fail(fmt.Errorf("%s: family written by two collectors", d.name))
			continue
		}
		m, err := bw.Write(w.fams[d])
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	if err := bw.Flush(); err != nil {
		return n, err
	}
	return n, w.err
}

// Collect collects every registered collector: a registry is a collector
// too.
func (r *Registry) Collect(w *Writer) {
	r.mu.Lock()
	cs := slices.Clone(r.collectors)
	r.mu.Unlock()
	for _, c := range cs {
		c.Collect(w)
	}
}

// Counter is a monotonically increasing count, a member of a counter family.
type Counter struct {
	d      *Desc
	values []string
	v      atomic.Uint64
}

// NewCounter returns a counter family without labels.
func NewCounter(name, help string) *Counter {
	return &Counter{d: NewDesc(name, help, CounterType)}
}

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Value is the count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// Collect writes the counter.
func (c *Counter) Collect(w *Writer) { w.Sample(c.d, float64(c.v.Load()), c.values...) }

// members are the members of a family with labels, one per set of label
// values, made at first use.
type members[T any] struct {
	newMember func(values []string) *T // set once, by the family's constructor
	mu        sync.Mutex
	m         map[string]*T
}

// get returns the member of values, made at first use.
func (ms *members[T]) get(values []string) *T {
	key := strings.Join(values, "\xff")
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.m == nil {
		ms.m = make(map[string]*T)
	}
	m, ok := ms.m[key]
	if !ok {
		m = ms.newMember(slices.Clone(values))
		ms.m[key] = m
	}
	return m
}

// sorted returns the members in the order of their label values.
func (ms *members[T]) sorted(valuesOf func(*T) []string) []*T {
	ms.mu.Lock()
	out := make([]*T, 0, len(ms.m))
	for _, m := range ms.m {
		out = append(out, m)
	}
	ms.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return slices.Compare(valuesOf(out[i]), valuesOf(out[j])) < 0 })
	return out
}

// CounterVec is a counter family with labels.
type CounterVec struct {
	d       *Desc
	members members[Counter]
}

// NewCounterVec returns a counter family with the given label names.
func NewCounterVec(name, help string, labels ...string) *CounterVec {
	v := &CounterVec{d: NewDesc(name, help, CounterType, labels...)}
	v.members.newMember = func(values []string) *Counter { return &Counter{d: v.d, values: values} }
	return v
}

// With returns the counter of the given label values, made at first use.
func (v *CounterVec) With(values ...string) *Counter {
	return v.members.get(values)
}

// Collect writes every counter of the family, in label order.
func (v *CounterVec) Collect(w *Writer) {
	for _, c := range v.members.sorted(func(c *Counter) []string { return c.values }) {
		c.Collect(w)
	}
}

// histogramData is a histogram's state; buckets are not cumulative.
type histogramData struct {
	upper  []float64
	counts []uint64
	count  uint64
	sum    float64
}

// Histogram counts observations in buckets, a member of a histogram family.
// Observations and scrapes take a mutex, so a scrape never sees a count
// that disagrees with its buckets.
type Histogram struct {
	d      *Desc
	values []string
	mu     sync.Mutex
	data   histogramData
}

// NewHistogram returns a histogram family without labels. Buckets are the
// upper bounds, ascending; +Inf is implied.
func NewHistogram(name, help string, buckets []float64) *Histogram {
	return newHistogram(NewDesc(name, help, HistogramType), checkBuckets(name, buckets), nil)
}

func newHistogram(d *Desc, buckets []float64, values []string) *Histogram {
	return &Histogram{d: d, values: values, data: histogramData{upper: buckets, counts: make([]uint64, len(buckets))}}
}

func checkBuckets(name string, b []float64) []float64 {
	for i := range b {
		if math.IsNaN(b[i]) || i > 0 && b[i] <= b[i-1] {
			panic(fmt.Sprintf("metrics: %s: buckets not strictly ascending: %v", name, b))
		}
	}
	if len(b) > 0 && math.IsInf(b[len(b)-1], 1) {
		b = b[:len(b)-1]
	}
	return slices.Clone(b)
}

// Observe adds one observation.
func (h *Histogram) Observe(v float64) {
	i := sort.SearchFloat64s(h.data.upper, v) // first bound >= v
	h.mu.Lock()
	if i < len(h.data.counts) {
		h.data.counts[i]++
	}
	h.data.count++
	h.data.sum += v
	h.mu.Unlock()
}

// Collect writes the histogram.
func (h *Histogram) Collect(w *Writer) {
	h.mu.Lock()
	snap := h.data
	snap.counts = slices.Clone(h.data.counts)
	h.mu.Unlock()
	w.histogram(h.d, &snap, h.values)
}

// HistogramVec is a histogram family with labels.
type HistogramVec struct {
	d       *Desc
	buckets []float64
	members members[Histogram]
}

// NewHistogramVec returns a histogram family with the given buckets and
// label names.
func NewHistogramVec(name, help string, buckets []float64, labels ...string) *HistogramVec {
	v := &HistogramVec{
		d:       NewDesc(name, help, HistogramType, labels...),
		buckets: checkBuckets(name, buckets),
	}
	v.members.newMember = func(values []string) *Histogram { return newHistogram(v.d, v.buckets, values) }
	return v
}

// With returns the histogram of the given label values, made at first use.
func (v *HistogramVec) With(values ...string) *Histogram {
	return v.members.get(values)
}

// Collect writes every histogram of the family, in label order.
func (v *HistogramVec) Collect(w *Writer) {
	for _, h := range v.members.sorted(func(h *Histogram) []string { return h.values }) {
		h.Collect(w)
	}
}
