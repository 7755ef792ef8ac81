package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/test/chain"
)

// dashboardQuery is one query of a shipped Grafana dashboard.
type dashboardQuery struct{ where, expr string }

var labelValuesQuery = regexp.MustCompile(`^label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)

// dashboardQueries reads every panel query ("expr") and every variable's
// label_values selector of the dashboards in dir.
func dashboardQueries(t *testing.T, dir string) []dashboardQuery {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in %s: %v", dir, err)
	}
	var out []dashboardQuery
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var walk func(v any, path string)
		walk = func(v any, path string) {
			switch v := v.(type) {
			case map[string]any:
				for k, x := range v {
					if s, ok := x.(string); ok && k == "expr" {
						out = append(out, dashboardQuery{filepath.Base(f) + path, s})
					}
					if s, ok := x.(string); ok && k == "query" {
						if m := labelValuesQuery.FindStringSubmatch(s); m != nil {
							out = append(out, dashboardQuery{filepath.Base(f) + path + " (variable)", m[1]})
						}
					}
					walk(x, path+"."+k)
				}
			case []any:
				for i, x := range v {
					walk(x, fmt.Sprintf("%s[%d]", path, i))
				}
			}
		}
		walk(doc, "")
	}
	return out
}

var (
	// a series selector: a name and its label matchers, if any
	selector   = regexp.MustCompile(`\bvigil_[a-z_]+\b(\{[^}]*\})?`)
	comparison = regexp.MustCompile(`==|!=|>=|<=|\s>\s|\s<\s`)
)

// checkDashboards runs every query of every shipped dashboard against the
// chain's Prometheus, Grafana's variables set to the scene's node,
// namespace and container: each must run, and return data when every series
// it selects (name and label matchers) has series in Prometheus and it
// filters nothing out by a comparison (where the scene has data for it).
// A selector that matches no series (a misspelt name or label) is not
// caught here: deploy's TestGrafanaDashboards checks every name is one
// Vigil exposes; this catches queries that error, and joins, aggregations
// and windows that lose the data their series hold.
func checkDashboards(ctx context.Context, t *testing.T, c *chain.Chain, root, node, namespace, container string) {
	t.Helper()
	macros := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "5m",
		"$node", node, "$namespace", namespace, "$container", container)
	present := map[string]bool{}
	has := func(sel string) bool {
		if v, ok := present[sel]; ok {
			return v
		}
		res, err := c.Query(ctx, "count("+sel+")")
		present[sel] = err == nil && len(res) > 0
		return present[sel]
	}
	queries := dashboardQueries(t, filepath.Join(root, "deploy", "grafana"))
	empty := 0
	for _, q := range queries {
		expr := macros.Replace(q.expr)
		res, err := c.Query(ctx, expr)
		if err != nil {
			t.Errorf("dashboard %s: %s: %v", q.where, expr, err)
			continue
		}
		if len(res) > 0 || comparison.MatchString(expr) {
			continue
		}
		all := true
		for _, sel := range selector.FindAllString(expr, -1) {
			all = all && has(sel)
		}
		if all {
			t.Errorf("dashboard %s: %s returned nothing, though the scene has every series it reads", q.where, expr)
		}
		empty++
	}
	t.Logf("%d dashboard queries ran; %d returned nothing for want of series or by their filter", len(queries), empty)
}
