// Package expotest checks Prometheus text expositions in tests: that they
// parse and that no series appears twice (Prometheus rejects a scrape that
// holds a duplicate sample).
package expotest

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Check parses text as the Prometheus text format (UTF-8 names allowed) and
// returns an error naming the first problem: a parse error, or a series
// (name and label set, in any label order) that appears twice. It returns
// the number of series read.
func Check(text []byte) (int, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return 0, fmt.Errorf("exposition does not parse: %w", err)
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
				return 0, fmt.Errorf("series appears twice: %s", key)
			}
			seen[key] = true
		}
	}
	return len(seen), nil
}
