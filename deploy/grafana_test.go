package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/testenv"
	"sigs.k8s.io/yaml"
)

// The dashboards' JSON model: Grafana's classic dashboard model (what
// "Export for sharing externally" writes and grafana.com/dashboards hosts),
// schemaVersion 39, written for Grafana 11; Grafana 12 and 13 import the
// classic model and migrate it. These types hold exactly the fields the
// dashboards use, decoded strictly: a field misspelt or added without a
// thought fails here.
const grafanaSchemaVersion = 39

type dashboard struct {
	UID                  string   `json:"uid"`
	Title                string   `json:"title"`
	Description          string   `json:"description"`
	Tags                 []string `json:"tags"`
	Editable             bool     `json:"editable"`
	GraphTooltip         int      `json:"graphTooltip"`
	Timezone             string   `json:"timezone"`
	Refresh              string   `json:"refresh"`
	SchemaVersion        int      `json:"schemaVersion"`
	Version              int      `json:"version"`
	FiscalYearStartMonth int      `json:"fiscalYearStartMonth"`
	LiveNow              bool     `json:"liveNow"`
	Time                 struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
	Timepicker  struct{}        `json:"timepicker"`
	Annotations json.RawMessage `json:"annotations"`
	Links       json.RawMessage `json:"links"`
	Templating  struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type variable struct {
	Name       string          `json:"name"`
	Label      string          `json:"label"`
	Type       string          `json:"type"`
	Datasource *datasourceRef  `json:"datasource,omitempty"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition,omitempty"`
	Refresh    int             `json:"refresh"`
	Sort       int             `json:"sort,omitempty"`
	Multi      bool            `json:"multi,omitempty"`
	IncludeAll bool            `json:"includeAll,omitempty"`
	AllValue   *string         `json:"allValue,omitempty"`
	Current    struct{}        `json:"current"`
	Hide       int             `json:"hide"`
	Options    []any           `json:"options"`
	Regex      string          `json:"regex"`
}

type panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description,omitempty"`
	Collapsed   bool           `json:"collapsed,omitempty"`
	Datasource  *datasourceRef `json:"datasource,omitempty"`
	GridPos     struct {
		H int `json:"h"`
		W int `json:"w"`
		X int `json:"x"`
		Y int `json:"y"`
	} `json:"gridPos"`
	Panels          []panel         `json:"panels,omitempty"`
	Targets         []target        `json:"targets,omitempty"`
	FieldConfig     json.RawMessage `json:"fieldConfig,omitempty"`
	Options         json.RawMessage `json:"options,omitempty"`
	Transformations json.RawMessage `json:"transformations,omitempty"`
}

type target struct {
	RefID        string         `json:"refId"`
	Datasource   *datasourceRef `json:"datasource"`
	EditorMode   string         `json:"editorMode"`
	Expr         string         `json:"expr"`
	LegendFormat string         `json:"legendFormat"`
	Range        bool           `json:"range"`
	Instant      bool           `json:"instant"`
	Format       string         `json:"format,omitempty"`
}

// grafanaMacros are Grafana's and the dashboards' variables, replaced by a
// value of the right kind before a query goes to Prometheus's parser.
var grafanaMacros = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"$node", "node-1", "$namespace", "default", "$container", "web",
)

var labelValues = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// dashboardQueries decodes a dashboard strictly, checks its model and
// layout, and returns its queries by a name that says where each is.
func dashboardQueries(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := unmarshalStrict(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	name := filepath.Base(path)
	switch {
	case d.SchemaVersion != grafanaSchemaVersion:
		t.Errorf("%s: schemaVersion %d, want %d", name, d.SchemaVersion, grafanaSchemaVersion)
	case d.UID == "" || len(d.UID) > 40 || d.Title == "":
		t.Errorf("%s: uid %q (1-40 characters) and title %q needed", name, d.UID, d.Title)
	}
	queries := map[string]string{}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Type {
		case "datasource":
			if string(v.Query) != `"prometheus"` {
				t.Errorf("%s: datasource variable %s queries %s, want prometheus", name, v.Name, v.Query)
			}
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Errorf("%s: variable %s: %v", name, v.Name, err)
				continue
			}
			m := labelValues.FindStringSubmatch(q.Query)
			if m == nil {
				t.Errorf("%s: variable %s query %q: want label_values(SELECTOR, LABEL)", name, v.Name, q.Query)
				continue
			}
			queries[fmt.Sprintf("%s variable %s", name, v.Name)] = m[1]
		default:
			t.Errorf("%s: variable %s of type %s not checked here", name, v.Name, v.Type)
		}
	}
	if !vars["datasource"] {
		t.Errorf("%s: no datasource variable", name)
	}
	ids := map[int]bool{}
	type cell struct{ x, y int }
	taken := map[cell]int{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("%s: panel id %d twice", name, p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W < 1 || g.H < 1 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("%s: panel %q at %+v is outside the 24-column grid", name, p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Errorf("%s: panel %d %q overlaps panel %d", name, p.ID, p.Title, other)
				}
				taken[cell{x, y}] = p.ID
			}
		}
		switch p.Type {
		case "row":
			if len(p.Targets) > 0 {
				t.Errorf("%s: row %q has queries", name, p.Title)
			}
			continue
		case "stat", "timeseries", "table":
		default:
			t.Errorf("%s: panel %q of type %s: not a core panel this test knows", name, p.Title, p.Type)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || p.Datasource.Type != "prometheus" {
			t.Errorf("%s: panel %q datasource %+v: want the ${datasource} variable", name, p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: panel %q has no query", name, p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if refs[tg.RefID] || tg.RefID == "" {
				t.Errorf("%s: panel %q: refId %q missing or twice", name, p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s: panel %q query %s is empty", name, p.Title, tg.RefID)
			}
			for _, v := range regexp.MustCompile(`\$([a-z]+)`).FindAllStringSubmatch(tg.Expr, -1) {
				if !vars[v[1]] {
					t.Errorf("%s: panel %q uses $%s, which the dashboard does not define", name, p.Title, v[1])
				}
			}
			queries[fmt.Sprintf("%s panel %d %q query %s", name, p.ID, p.Title, tg.RefID)] = tg.Expr
		}
	}
	return queries
}

// TestGrafanaDashboards extracts every query of every dashboard (panels and
// variables), checks it with Prometheus's own parser (promtool check rules
// on a rule file holding each query as a recording rule, Grafana's
// variables replaced by values), and checks that every series it names is
// one Vigil exposes or an agreed name being built.
func TestGrafanaDashboards(t *testing.T) {
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "deploy/grafana/*.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"vigil-container.json", "vigil-fleet.json", "vigil-node.json", "vigil-remediation.json"}
	var got []string
	for _, f := range files {
		got = append(got, filepath.Base(f))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("dashboards %v, want %v", got, want)
	}
	known := knownMetrics(t)
	var rules []map[string]string
	where := map[string]string{}
	for _, f := range files {
		for at, expr := range dashboardQueries(t, f) {
			for _, m := range metricNames(expr) {
				if !known[m] {
					t.Errorf("%s reads %s, which Vigil does not expose", at, m)
				}
			}
			rec := fmt.Sprintf("dashboard_query_%d", len(rules))
			where[rec] = at
			rules = append(rules, map[string]string{"record": rec, "expr": grafanaMacros.Replace(expr)})
		}
	}
	if len(rules) < 40 {
		t.Errorf("found %d queries; the dashboards lost some", len(rules))
	}
	promtool := testenv.LookPath(t, "promtool")
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboards", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCmd(promtool, "check", "rules", path)
	if err != nil {
		// Name the panels whose queries failed.
		for rec, at := range where {
			if strings.Contains(out, rec+"\"") || strings.Contains(out, rec+":") || strings.Contains(out, rec+" ") {
				t.Errorf("%s: %s", at, rec)
			}
		}
		t.Fatalf("promtool check rules on the dashboards' queries: %v\n%s", err, out)
	}
}
