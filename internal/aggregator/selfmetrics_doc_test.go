package aggregator_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// selfFamily is one row of docs/metrics.md's table of the aggregator's own
// series.
type selfFamily struct {
	name, typ, present string
	// labels maps each label to the values the doc lists for it (nil when
	// it describes them instead: "node", "a gRPC method or HTTP route").
	labels map[string][]string
}

// fromStart: the doc says the family is there from the aggregator's start.
func (f selfFamily) fromStart() bool { return strings.HasPrefix(f.present, "from the start") }

var (
	selfRow   = regexp.MustCompile("^\\| `(vigil_[a-z_]+)` \\| ([a-z]+) \\|([^|]*)\\| ([^|]+) \\|$")
	labelPart = regexp.MustCompile(`^([a-z_]+)(?: \((.*)\))?$`)
	labelWord = regexp.MustCompile(`^[a-z0-9_]+$`)
)

// readSelfMetricsDoc reads the rows of docs/metrics.md's section "The
// aggregator's own series".
func readSelfMetricsDoc(t *testing.T) []selfFamily {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	const heading = "\n## The aggregator's own series\n"
	start := strings.Index(doc, heading)
	if start < 0 {
		t.Fatalf("docs/metrics.md has no section %q", strings.TrimSpace(heading))
	}
	section := doc[start+len(heading):]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var out []selfFamily
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		m := selfRow.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("docs/metrics.md: a row of the aggregator's own series that does not read as | `name` | type | labels | present |: %s", line)
		}
		f := selfFamily{name: m[1], typ: m[2], present: strings.TrimSpace(m[4]), labels: map[string][]string{}}
		if cell := strings.TrimSpace(m[3]); cell != "" {
			for _, part := range strings.Split(cell, "; ") {
				lm := labelPart.FindStringSubmatch(part)
				if lm == nil {
					t.Fatalf("docs/metrics.md, %s: label %q does not read as name or name (values)", f.name, part)
				}
				var values []string
				for _, v := range strings.Split(lm[2], ", ") {
					if !labelWord.MatchString(v) {
						values = nil // a description, not a list of values
						break
					}
					values = append(values, v)
				}
				f.labels[lm[1]] = values
			}
		}
		out = append(out, f)
	}
	if len(out) < 20 {
		t.Fatalf("docs/metrics.md lists %d families of the aggregator's own, want them all", len(out))
	}
	return out
}

func parseExposition(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return mfs
}

// checkFamily compares a scraped family with its row: its type, its label
// names, and, for labels whose values the doc lists, those values exactly;
// every counter and histogram at 0 when zero is set.
func checkFamily(t *testing.T, f selfFamily, mf *dto.MetricFamily, zero bool) {
	t.Helper()
	if got := strings.ToLower(mf.GetType().String()); got != f.typ {
		t.Errorf("%s is a %s, the doc says %s", f.name, got, f.typ)
	}
	seen := map[string][]string{}
	for _, m := range mf.GetMetric() {
		var names []string
		for _, lp := range m.GetLabel() {
			names = append(names, lp.GetName())
			if !slices.Contains(seen[lp.GetName()], lp.GetValue()) {
				seen[lp.GetName()] = append(seen[lp.GetName()], lp.GetValue())
			}
		}
		var want []string
		for l := range f.labels {
			want = append(want, l)
		}
		slices.Sort(names)
		slices.Sort(want)
		if !slices.Equal(names, want) {
			t.Errorf("%s has a series with labels %v, the doc says %v", f.name, names, want)
		}
		if zero && (m.GetCounter().GetValue() != 0 || m.GetHistogram().GetSampleCount() != 0) {
			t.Errorf("%s %v is not 0 on an aggregator that has done nothing", f.name, m.GetLabel())
		}
	}
	for l, values := range f.labels {
		if values == nil {
			continue
		}
		got := slices.Sorted(slices.Values(seen[l]))
		if want := slices.Sorted(slices.Values(values)); !slices.Equal(got, want) {
			t.Errorf("%s: label %s has the values %v, the doc lists %v", f.name, l, got, want)
		}
	}
}

// TestSelfMetricsFromStart: a fresh aggregator's /metrics (TLS, a bbolt
// journal: remediation on), read with Prometheus's own parser, carries
// every family docs/metrics.md lists as the aggregator's own, with the type
// and labels it says, every label value it lists, and every counter at 0;
// and nothing of its own that the doc does not list. The families whose
// label values are only known later are absent then, and appear at 0 once
// those values are known.
func TestSelfMetricsFromStart(t *testing.T) {
	// Why each of these cannot be there on a fresh aggregator: a series
	// needs a label value that nothing has given yet.
	const exposition = "the figures of the last exposition of each shard: there are none before the first scrape ends"
	conditional := map[string]string{
		"vigil_aggregator_exposition_duration_seconds": exposition,
		"vigil_aggregator_exposition_series":           exposition,
		"vigil_aggregator_exposition_bytes":            exposition,
		"vigil_aggregator_sequence_gaps_total":         "per node: no node is known yet",
		"vigil_aggregator_quota_exceeded_total":        "per node: no node is known yet",
		"vigil_aggregator_peer_errors_total":           "per other replica, with replicas on etcd only (TestReplicasHoldNodes checks it)",
	}
	doc := readSelfMetricsDoc(t)
	documented := map[string]bool{}
	for _, f := range doc {
		documented[f.name] = true
		if _, ok := conditional[f.name]; ok == f.fromStart() {
			t.Errorf("docs/metrics.md says %s is present %q; this test's list of conditional families disagrees", f.name, f.present)
		}
	}
	for name := range conditional {
		if !documented[name] {
			t.Errorf("%s is in this test's conditional list but not in docs/metrics.md", name)
		}
	}

	h, _ := startRemediating(t, "")
	fams := parseExposition(t, scrape(t, h, ""))
	for _, f := range doc {
		mf, ok := fams[f.name]
		if !f.fromStart() {
			if ok {
				t.Errorf("%s is on a fresh aggregator's /metrics, the doc says %q (%s): update both", f.name, f.present, conditional[f.name])
			}
			continue
		}
		if !ok {
			t.Errorf("%s is not on a fresh aggregator's /metrics", f.name)
			continue
		}
		checkFamily(t, f, mf, true)
	}
	for name := range fams {
		if (strings.HasPrefix(name, "vigil_aggregator_") || strings.HasPrefix(name, "vigil_remediation")) && !documented[name] {
			t.Errorf("%s is on /metrics but not in docs/metrics.md's table of the aggregator's own series", name)
		}
	}
	// The refusal series: each gRPC method and HTTP route that needs a
	// credential, for no credential and for each role that may not call
	// it; none for a role that may.
	refused := map[[2]string]bool{}
	for _, m := range fams["vigil_aggregator_auth_refused_total"].GetMetric() {
		var k [2]string
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "role" {
				k[0] = lp.GetValue()
			} else {
				k[1] = lp.GetValue()
			}
		}
		refused[k] = true
	}
	for _, c := range []struct {
		role, method string
		want         bool
	}{
		{"none", "POST /api/v1/alerts", true},
		{"viewer", "POST /api/v1/alerts", true},
		{"operator", "POST /api/v1/alerts", false},
		{"node", "GET /api/v1/remediations", true},
		{"alertmanager", "GET /api/v1/containers", true},
		{"viewer", "GET /api/v1/nodes", false},
		{"viewer", "/" + vigilv1.AgentGateway_ServiceDesc.ServiceName + "/Connect", true},
		{"node", vigilv1.Vigil_RequestRemediation_FullMethodName, true},
		{"viewer", vigilv1.Vigil_RequestRemediation_FullMethodName, true},
		{"operator", vigilv1.Vigil_RequestRemediation_FullMethodName, false},
		{"none", vigilv1.Bootstrap_Renew_FullMethodName, true},
		{"none", vigilv1.Bootstrap_Bootstrap_FullMethodName, false}, // public: a token, checked by the handler
		{"unknown", "unknown", true},
	} {
		if refused[[2]string{c.role, c.method}] != c.want {
			t.Errorf("vigil_aggregator_auth_refused_total{role=%q,method=%q} present: %v, want %v", c.role, c.method, !c.want, c.want)
		}
	}
	if t.Failed() {
		return
	}

	// A node connects: its series appear at 0, every cap of the quota
	// counter included; the shard of the scrapes above has its figures.
	a := h.mustConnect("n1", "i1")
	a.send(1, snapshotMsg())
	a.waitAck(1)
	fams = parseExposition(t, scrape(t, h, ""))
	for _, f := range doc {
		if f.fromStart() || f.name == "vigil_aggregator_peer_errors_total" {
			continue
		}
		mf, ok := fams[f.name]
		if !ok {
			t.Errorf("%s is not on /metrics once a node is known and a scrape has ended (%s)", f.name, f.present)
			continue
		}
		checkFamily(t, f, mf, strings.HasPrefix(f.present, "per node"))
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if (lp.GetName() == "node" && lp.GetValue() != "n1") || (lp.GetName() == "shard" && lp.GetValue() != "all") {
					t.Errorf("%s has a series for %s=%q", f.name, lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}
