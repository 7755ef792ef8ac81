package metrics_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vigilhq/vigil/internal/aggregator/loadgen"
	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/metrics"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// benchFleet builds the loadgen's fleet in memory: VIGIL_BENCH_NODES nodes
// (default 100) of 100 containers, after one sample interval.
func benchFleet(b *testing.B) []metrics.NodeInput {
	b.Helper()
	nodes := 100
	if v := os.Getenv("VIGIL_BENCH_NODES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		nodes = n
	}
	out := make([]metrics.NodeInput, nodes)
	for i := range out {
		name := loadgen.NodeName("", i)
		s := loadgen.NewNodeState(name, 100, uint64(i))
		s.Advance(10e9)
		in := metrics.NodeInput{Name: name, Up: true, Containers: s.Containers(), Network: s.Network(),
			Samples: map[container.Key]*vigilv1.ResourceSample{}}
		for _, sm := range s.Samples() {
			in.Samples[container.Key{Namespace: sm.GetNamespace(), ID: sm.GetContainerId()}] = sm
		}
		out[i] = in
	}
	return out
}

func renderAll(fleet []metrics.NodeInput) ([]*metrics.Rendered, int) {
	rs := make([]*metrics.Rendered, len(fleet))
	series := 0
	for i, in := range fleet {
		rs[i] = metrics.RenderNode(in)
		series += rs[i].Series()
	}
	return rs, series
}

// BenchmarkRenderNode: one node of 100 containers rendered from its state.
func BenchmarkRenderNode(b *testing.B) {
	fleet := benchFleet(b)[:1]
	series := metrics.RenderNode(fleet[0]).Series()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		metrics.RenderNode(fleet[0])
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*series), "ns/series")
}

// BenchmarkExposition compares, on the same fleet, writing pre-rendered
// bytes (the aggregator's path once nodes are rendered), rendering every
// node and writing (every node changed since the last scrape), and
// client_golang's registry building every series as a const metric, then
// Gather and the text encoder.
func BenchmarkExposition(b *testing.B) {
	fleet := benchFleet(b)
	rendered, series := renderAll(fleet)

	b.Run("prerendered", func(b *testing.B) {
		var n int64
		for b.Loop() {
			n, _ = metrics.WriteFamilies(io.Discard, rendered)
		}
		b.SetBytes(n)
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*series), "ns/series")
		b.ReportMetric(float64(series), "series")
	})
	b.Run("prerendered_gzip", func(b *testing.B) {
		gz, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
		for b.Loop() {
			gz.Reset(io.Discard)
			_, _ = metrics.WriteFamilies(gz, rendered)
			gz.Close()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*series), "ns/series")
	})
	b.Run("render_and_write", func(b *testing.B) {
		for b.Loop() {
			rs, _ := renderAll(fleet)
			_, _ = metrics.WriteFamilies(io.Discard, rs)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*series), "ns/series")
	})
	b.Run("client_golang", func(b *testing.B) {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(newConstCollector(b, rendered))
		for b.Loop() {
			mfs, err := reg.Gather()
			if err != nil {
				b.Fatal(err)
			}
			enc := expfmt.NewEncoder(io.Discard, expfmt.NewFormat(expfmt.TypeTextPlain))
			for _, mf := range mfs {
				if err := enc.Encode(mf); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*series), "ns/series")
	})
}

// constCollector emits the fleet's series through client_golang const
// metrics, the way a collector over the fleet state would. The label values
// are parsed once up front, so its cost is client_golang's alone (a lower
// bound of a real collector, which would also walk the state).
type constCollector struct {
	descs   []*prometheus.Desc
	types   []prometheus.ValueType
	metrics [][]constSeries
}

type constSeries struct {
	labels []string
	value  float64
}

func newConstCollector(b *testing.B, rendered []*metrics.Rendered) *constCollector {
	var buf bytes.Buffer
	if _, err := metrics.WriteFamilies(&buf, rendered); err != nil {
		b.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		b.Fatal(err)
	}
	c := &constCollector{}
	for _, mf := range mfs {
		var names []string
		for _, l := range mf.GetMetric()[0].GetLabel() {
			names = append(names, l.GetName())
		}
		c.descs = append(c.descs, prometheus.NewDesc(mf.GetName(), mf.GetHelp(), names, nil))
		typ := prometheus.GaugeValue
		if mf.GetType() == dto.MetricType_COUNTER {
			typ = prometheus.CounterValue
		}
		c.types = append(c.types, typ)
		var ss []constSeries
		for _, m := range mf.GetMetric() {
			var vals []string
			for _, l := range m.GetLabel() {
				vals = append(vals, l.GetValue())
			}
			v := m.GetGauge().GetValue()
			if typ == prometheus.CounterValue {
				v = m.GetCounter().GetValue()
			}
			ss = append(ss, constSeries{vals, v})
		}
		c.metrics = append(c.metrics, ss)
	}
	return c
}

func (c *constCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *constCollector) Collect(ch chan<- prometheus.Metric) {
	for i, d := range c.descs {
		for _, s := range c.metrics[i] {
			ch <- prometheus.MustNewConstMetric(d, c.types[i], s.value, s.labels...)
		}
	}
}
