// Package expotest checks Prometheus text expositions in tests: that they
// parse and that no series appears twice (Prometheus rejects a scrape that
// holds a duplicate sample).
package expotest

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vigilhq/vigil/internal/metrics"
)

// Check parses text as the Prometheus text format (UTF-8 names allowed) and
// returns an error naming the first problem: a parse error, or a series
// (name and label set, in any label order) that appears twice. It returns
// the number of series read.
func Check(text []byte) (int, error) {
	_, n, err := parse(text)
	return n, err
}

// parse is Check that also returns the parsed families.
func parse(text []byte) (map[string]*dto.MetricFamily, int, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return nil, 0, fmt.Errorf("exposition does not parse: %w", err)
	}
	seen := make(map[string]bool)
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			pairs := make([]string, 0, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				pairs = append(pairs, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			slices.Sort(pairs)
			key := name + "{" + strings.Join(pairs, ",") + "}"
			if seen[key] {
				return nil, 0, fmt.Errorf("series appears twice: %s", key)
			}
			seen[key] = true
		}
	}
	return families, len(seen), nil
}

// Gatherer renders self-metric collectors (internal/metrics) and parses the
// result with Prometheus's own text parser, so that tests can read the
// agent's self-metrics with client_golang's testutil (GatherAndCompare,
// GatherAndLint, ...) and so that every such test also checks that the
// exposition parses and holds no series twice.
type Gatherer []metrics.Collector

// Gather renders g's collectors and parses the exposition.
func (g Gatherer) Gather() ([]*dto.MetricFamily, error) {
	reg := metrics.NewRegistry()
	reg.Register(g...)
	var buf bytes.Buffer
	if _, err := reg.WriteTo(&buf); err != nil {
		return nil, err
	}
	families, _, err := parse(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, buf.Bytes())
	}
	// In the order client_golang's registries gather in (which testutil's
	// comparisons expect): labels by name, series by label values.
	out := make([]*dto.MetricFamily, 0, len(families))
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
		}
		slices.SortStableFunc(mf.Metric, func(a, b *dto.Metric) int {
			for i := range min(len(a.Label), len(b.Label)) {
				if c := strings.Compare(a.Label[i].GetValue(), b.Label[i].GetValue()); c != 0 {
					return c
				}
			}
			return len(a.Label) - len(b.Label)
		})
		out = append(out, mf)
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out, nil
}

// Value returns the value of the one series of family name whose labels
// include the given name/value pairs (a counter's or gauge's value, a
// histogram's count), and whether there was exactly one.
func Value(families []*dto.MetricFamily, name string, labelPairs ...string) (float64, bool) {
	var v float64
	n := 0
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labelPairs); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labelPairs[i] && l.GetValue() == labelPairs[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			n++
			switch {
			case m.Counter != nil:
				v = m.GetCounter().GetValue()
			case m.Gauge != nil:
				v = m.GetGauge().GetValue()
			case m.Histogram != nil:
				v = float64(m.GetHistogram().GetSampleCount())
			case m.Untyped != nil:
				v = m.GetUntyped().GetValue()
			}
		}
	}
	return v, n == 1
}
