package metrics_test

import (
	"bytes"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/metrics/expotest"
)

var testBuckets = []float64{.001, .005, .01, .5, 1}

// awkward are label values the text format must escape, and one that is not
// UTF-8 (which would fail the whole scrape if written as is).
var awkward = []string{"plain", `back\slash`, `"quoted"`, "two\nlines", "bad\xffutf8", ""}

// TestSelfMetricsMatchClientGolang records the same observations in our
// self-metrics and in client_golang's metrics and checks that both
// expositions, parsed by Prometheus's parser, say the same thing.
func TestSelfMetricsMatchClientGolang(t *testing.T) {
	ours := struct {
		c  *metrics.Counter
		cv *metrics.CounterVec
		h  *metrics.Histogram
		hv *metrics.HistogramVec
		g  *metrics.Desc
	}{
		c:  metrics.NewCounter("t_plain_total", "A counter without labels."),
		cv: metrics.NewCounterVec("t_by_kind_total", `Counts, by kind; help with a \ and a`+"\nnewline.", "kind"),
		h:  metrics.NewHistogram("t_duration_seconds", "A histogram.", testBuckets),
		hv: metrics.NewHistogramVec("t_call_seconds", "A histogram with labels.", testBuckets, "call", "code"),
		g:  metrics.NewDesc("t_level", "A gauge written at collection.", metrics.GaugeType, "ns", "manager"),
	}
	theirs := struct {
		c  prometheus.Counter
		cv *prometheus.CounterVec
		h  prometheus.Histogram
		hv *prometheus.HistogramVec
		g  *prometheus.Desc
	}{
		c:  prometheus.NewCounter(prometheus.CounterOpts{Name: "t_plain_total", Help: "A counter without labels."}),
		cv: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "t_by_kind_total", Help: `Counts, by kind; help with a \ and a` + "\nnewline."}, []string{"kind"}),
		h:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: "t_duration_seconds", Help: "A histogram.", Buckets: testBuckets}),
		hv: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "t_call_seconds", Help: "A histogram with labels.", Buckets: testBuckets}, []string{"call", "code"}),
		g:  prometheus.NewDesc("t_level", "A gauge written at collection.", []string{"ns", "manager"}, nil),
	}

	observations := []float64{0, .0005, .001, .001, .0049, .005, .3, 1, 1.0001, 7, 1e9, math.Inf(1)}
	for i := 0; i < 1234567; i += 1000 {
		ours.c.Inc()
		theirs.c.Inc()
	}
	for i, v := range awkward {
		ours.cv.With(v).Add(uint64(i + 1))
		theirs.cv.WithLabelValues(valid(v)).Add(float64(i + 1))
	}
	for i, v := range observations {
		ours.h.Observe(v)
		theirs.h.Observe(v)
		call, code := awkward[i%len(awkward)], []string{"ok", "timeout"}[i%2]
		ours.hv.With(call, code).Observe(v)
		theirs.hv.WithLabelValues(valid(call), code).Observe(v)
	}
	gauges := []struct {
		v       float64
		ns, mgr string
	}{{3, "default", "vigil"}, {0.25, "k8s.io", "kubelet"}, {-2, awkward[1], awkward[4]}, {math.NaN(), "x", "y"}, {1e21, "big", "z"}}

	oursReg := expotest.Gatherer{ours.c, ours.cv, ours.h, ours.hv, metrics.CollectorFunc(func(w *metrics.Writer) {
		for _, g := range gauges {
			w.Sample(ours.g, g.v, g.ns, g.mgr)
		}
	})}
	theirsReg := prometheus.NewPedanticRegistry()
	theirsReg.MustRegister(theirs.c, theirs.cv, theirs.h, theirs.hv, gaugeCollector{theirs.g, func(ch chan<- prometheus.Metric) {
		for _, g := range gauges {
			ch <- prometheus.MustNewConstMetric(theirs.g, prometheus.GaugeValue, g.v, valid(g.ns), valid(g.mgr))
		}
	}})

	got, err := oursReg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want, err := theirsReg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if g, w := text(t, got), text(t, want); g != w {
		t.Errorf("our exposition, parsed, differs from client_golang's:\n--- ours\n%s\n--- client_golang\n%s", g, w)
	}
	if problems, err := testutil.GatherAndLint(oursReg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// valid is what our exposition writes for a label value that is not UTF-8
// (client_golang refuses such values; the agent cannot refuse a namespace).
func valid(v string) string { return strings.ToValidUTF8(v, "\uFFFD") }

type gaugeCollector struct {
	d       *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (g gaugeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- g.d }
func (g gaugeCollector) Collect(ch chan<- prometheus.Metric) { g.collect(ch) }

// text writes families in the text format, without what only one side
// sets (created timestamps), with each series' labels in name order and the
// series of a family in label order (the order of neither means anything).
func text(t *testing.T, mfs []*dto.MetricFamily) string {
	t.Helper()
	var b strings.Builder
	for _, mf := range mfs {
		key := func(m *dto.Metric) string {
			var k strings.Builder
			for _, l := range m.GetLabel() {
				k.WriteString(l.GetName() + "=" + l.GetValue() + "\xff")
			}
			return k.String()
		}
		for _, m := range mf.GetMetric() {
			slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
		}
		slices.SortFunc(mf.Metric, func(a, b *dto.Metric) int { return strings.Compare(key(a), key(b)) })
		for _, m := range mf.GetMetric() {
			if m.Counter != nil {
				m.Counter.CreatedTimestamp = nil
			}
			if m.Histogram != nil {
				m.Histogram.CreatedTimestamp = nil
			}
		}
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func TestSelfMetricsBadSampleIsReportedAndTheRestWritten(t *testing.T) {
	d := metrics.NewDesc("t_two_labels", "Two labels.", metrics.GaugeType, "a", "b")
	ok := metrics.NewCounter("t_ok_total", "Fine.")
	ok.Add(3)
	reg := metrics.NewRegistry()
	reg.Register(ok, metrics.CollectorFunc(func(w *metrics.Writer) {
		w.Sample(d, 1, "only-one")
		w.Sample(d, 2, "x", "y")
	}))
	var buf bytes.Buffer
	_, err := reg.WriteTo(&buf)
	if err == nil || !strings.Contains(err.Error(), "t_two_labels: 1 label values for 2 labels") {
		t.Errorf("err = %v, want the label count mismatch named", err)
	}
	out := buf.String()
	if !strings.Contains(out, "t_ok_total 3\n") || !strings.Contains(out, `t_two_labels{a="x",b="y"} 2`) {
		t.Errorf("the good samples are missing:\n%s", out)
	}
	if _, err := expotest.Check(buf.Bytes()); err != nil {
		t.Error(err)
	}
}

func TestSelfMetricsSameFamilyFromTwoCollectors(t *testing.T) {
	a := metrics.NewCounter("t_dup_total", "One.")
	b := metrics.NewCounter("t_dup_total", "Other.")
	reg := metrics.NewRegistry()
	reg.Register(a, b)
	var buf bytes.Buffer
	if _, err := reg.WriteTo(&buf); err == nil || !strings.Contains(err.Error(), "t_dup_total: family written by two collectors") {
		t.Errorf("err = %v", err)
	}
	if _, err := expotest.Check(buf.Bytes()); err != nil {
		t.Errorf("the exposition written anyway must stay valid: %v\n%s", err, buf.Bytes())
	}
}

func TestSelfMetricsInvalidNamesPanic(t *testing.T) {
	for _, c := range []struct {
		name   string
		typ    metrics.Type
		labels []string
	}{
		{"", metrics.GaugeType, nil},
		{"9starts_with_digit", metrics.GaugeType, nil},
		{"has-dash", metrics.GaugeType, nil},
		{"ok", metrics.GaugeType, []string{"with:colon"}},
		{"ok", metrics.GaugeType, []string{"__reserved"}},
		{"ok", metrics.HistogramType, []string{"le"}},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewDesc(%q, %v) did not panic", c.name, c.labels)
				}
			}()
			metrics.NewDesc(c.name, "help", c.typ, c.labels...)
		}()
	}
	defer func() {
		if recover() == nil {
			t.Error("NewHistogram with descending buckets did not panic")
		}
	}()
	metrics.NewHistogram("t_h", "help", []float64{1, 0.5})
}

// TestSelfMetricsConcurrent observes and scrapes at once (run with -race):
// every scrape is valid and consistent, and no observation is lost.
func TestSelfMetricsConcurrent(t *testing.T) {
	hv := metrics.NewHistogramVec("t_conc_seconds", "Concurrent.", testBuckets, "k")
	cv := metrics.NewCounterVec("t_conc_total", "Concurrent.", "k")
	g := expotest.Gatherer{hv, cv}
	const workers, each = 4, 2000
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := []string{"a", "b"}[i%2]
			for j := range each {
				hv.With(k).Observe(float64(j%7) / 100)
				cv.With(k).Inc()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for scraping := true; scraping; {
		select {
		case <-done:
			scraping = false
		default:
		}
		mfs, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if h := m.GetHistogram(); h != nil {
					bs := h.GetBucket()
					if last := bs[len(bs)-1].GetCumulativeCount(); last > h.GetSampleCount() {
						t.Fatalf("bucket count %d above the sample count %d", last, h.GetSampleCount())
					}
				}
			}
		}
	}
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		if v, ok := expotest.Value(mfs, "t_conc_seconds", "k", k); !ok || v != workers/2*each {
			t.Errorf("histogram %s count = %v (%v), want %d", k, v, ok, workers/2*each)
		}
		if v, ok := expotest.Value(mfs, "t_conc_total", "k", k); !ok || v != workers/2*each {
			t.Errorf("counter %s = %v (%v), want %d", k, v, ok, workers/2*each)
		}
	}
}

// TestProcessCollector checks the go_* and process_* series against
// client_golang's collectors read at the same moment.
func TestProcessCollector(t *testing.T) {
	ours, err := expotest.Gatherer{metrics.ProcessCollector()}.Gather()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	theirs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	near := func(name string, tolerance float64) {
		t.Helper()
		o, ok1 := expotest.Value(ours, name)
		c, ok2 := expotest.Value(theirs, name)
		if !ok1 || !ok2 {
			t.Errorf("%s: ours present %v, client_golang's present %v", name, ok1, ok2)
			return
		}
		if math.Abs(o-c) > tolerance*math.Max(math.Abs(c), 1) {
			t.Errorf("%s = %v, client_golang says %v", name, o, c)
		}
	}
	near("process_start_time_seconds", 1e-11) // within 0.02 s: both add ticks to the boot time, in floating point differently
	near("process_max_fds", 0)
	near("process_open_fds", 0.2)
	near("process_resident_memory_bytes", 0.5)
	near("process_virtual_memory_bytes", 0.5)
	near("process_cpu_seconds_total", 0.5)
	near("go_threads", 0.5)
	// client_golang gathers in goroutines of its own, which it counts.
	if v, _ := expotest.Value(ours, "go_goroutines"); v < 1 || v > float64(runtime.NumGoroutine()+2) {
		t.Errorf("go_goroutines = %v, runtime.NumGoroutine() = %d", v, runtime.NumGoroutine())
	}
	near("go_sched_gomaxprocs_threads", 0)
	near("go_gc_gogc_percent", 0)
	near("go_gc_gomemlimit_bytes", 0)
	near("go_memstats_sys_bytes", 0.5)
	near("go_memstats_heap_released_bytes", 1)
	near("go_memstats_next_gc_bytes", 1)
	if v, ok := expotest.Value(ours, "go_info", "version", runtime.Version()); !ok || v != 1 {
		t.Errorf("go_info = %v (%v)", v, ok)
	}
	if v, _ := expotest.Value(ours, "process_start_time_seconds"); time.Since(time.Unix(int64(v), 0)) > time.Hour {
		t.Errorf("process_start_time_seconds = %v, not this process's", v)
	}
	if v, _ := expotest.Value(ours, "process_open_fds"); v < 3 {
		t.Errorf("process_open_fds = %v", v)
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Fatalf("these series come from /proc: %v", err)
	}
}

// FuzzSelfLabelValues writes self-metrics whose label values come from
// outside (containerd namespaces, for one) and checks that the exposition
// still parses, holds each series once, and gives the values back.
func FuzzSelfLabelValues(f *testing.F) {
	for _, v := range awkward {
		f.Add(v, "k8s.io", 1.5)
	}
	f.Add("", "", 0.0)
	f.Add("}\"{", "\\\n\\", math.Inf(-1))
	f.Fuzz(func(t *testing.T, a, b string, v float64) {
		d := metrics.NewDesc("t_fuzz", "Fuzzed.", metrics.GaugeType, "a", "b")
		h := metrics.NewHistogramVec("t_fuzz_seconds", "Fuzzed.", testBuckets, "a")
		h.With(a).Observe(v)
		mfs, err := expotest.Gatherer{h, metrics.CollectorFunc(func(w *metrics.Writer) { w.Sample(d, v, a, b) })}.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got, ok := expotest.Value(mfs, "t_fuzz", "a", valid(a), "b", valid(b))
		if !ok || !(got == v || math.IsNaN(got) && math.IsNaN(v)) {
			t.Errorf("t_fuzz{a=%q,b=%q} = %v (%v), want %v", a, b, got, ok, v)
		}
		if n, ok := expotest.Value(mfs, "t_fuzz_seconds", "a", valid(a)); !ok || n != 1 {
			t.Errorf("histogram count %v (%v)", n, ok)
		}
	})
}
