package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/test/chain"
)

// portingQuery is one row of docs/metrics.md's porting table.
type portingQuery struct {
	what, query string
	hasData     bool
}

// portingQueries reads the Vigil column of docs/metrics.md's porting table.
func portingQueries(t *testing.T, root string) []portingQuery {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(b), "## Porting dashboards and alerts")
	if !ok {
		t.Fatal("docs/metrics.md has no porting table")
	}
	var out []portingQuery
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, " | ")
		if len(cells) != 4 || !strings.HasPrefix(cells[2], "`") {
			continue
		}
		out = append(out, portingQuery{
			what:    strings.TrimPrefix(cells[0], "| "),
			query:   strings.Trim(cells[2], "`"),
			hasData: strings.HasPrefix(cells[3], "yes"),
		})
	}
	if len(out) < 10 {
		t.Fatalf("docs/metrics.md's porting table: %d queries read, want at least 10", len(out))
	}
	return out
}

// checkPortingTable runs every Vigil query of the porting table against
// the chain's Prometheus: each must run, and those the table says have data
// in the scene must return some.
func checkPortingTable(ctx context.Context, t *testing.T, c *chain.Chain, root string) {
	t.Helper()
	for _, q := range portingQueries(t, root) {
		res, err := c.Query(ctx, q.query)
		switch {
		case err != nil:
			t.Errorf("porting table, %s: %s: %v", q.what, q.query, err)
		case q.hasData && len(res) == 0:
			t.Errorf("porting table, %s: %s returned nothing, and the scene has data for it", q.what, q.query)
		}
	}
}
