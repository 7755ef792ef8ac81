package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"
)

// repoRoot is the repository's root: this package lives in deploy/.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		tb.Fatal("cannot locate the test file")
	}
	return filepath.Dir(filepath.Dir(file))
}

// runTool runs a command in dir and fails the test with its output when it
// fails. It returns stdout.
func runTool(tb testing.TB, dir, name string, args ...string) string {
	tb.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		tb.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// agreedNames are the series being built by other work (signals, gossip,
// remediation), with names agreed before they land. Rules and dashboards may
// name them already: an alert or panel on a series that does not exist yet
// shows nothing, it does not fail. Remove a name from here once it is in
// the code.
var agreedNames = []string{
	"vigil_container_crash_looping",
	"vigil_container_restart_gave_up",
	"vigil_container_last_terminated_reason",
	"vigil_container_network_condition",
	"vigil_node_condition",
	"vigil_node_agent_dropped_messages_total",
}

var metricLiteral = regexp.MustCompile(`"(vigil_[a-z0-9_]+[a-z0-9])"`)

// knownMetrics returns every series name Vigil exposes (every "vigil_..."
// string literal in the non-test Go code of internal/, which is where the
// families are declared), the agreed names, the histogram and summary
// suffixes of each, and Prometheus's own `up`.
func knownMetrics(tb testing.TB) map[string]bool {
	tb.Helper()
	known := map[string]bool{"up": true}
	root := repoRoot(tb)
	err := filepath.WalkDir(filepath.Join(root, "internal"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range metricLiteral.FindAllStringSubmatch(string(b), -1) {
			known[m[1]] = true
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	for _, n := range agreedNames {
		if known[n] {
			tb.Logf("%s is in the code now: it can leave agreedNames", n)
		}
		known[n] = true
	}
	for n := range known {
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			known[n+s] = true
		}
	}
	return known
}

// promqlWords are the identifiers of PromQL itself, which metricNames skips.
var promqlWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`sum min max avg group stddev stdvar count count_values bottomk topk quantile
		by without on ignoring group_left group_right bool and or unless offset
		abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week day_of_year
		days_in_month delta deriv exp floor histogram_quantile holt_winters hour idelta increase irate
		label_replace label_join last_over_time ln log2 log10 minute month predict_linear rate resets round
		scalar sgn sort sort_desc sqrt time timestamp vector year avg_over_time min_over_time max_over_time
		sum_over_time count_over_time quantile_over_time stddev_over_time stdvar_over_time present_over_time
		inf nan Inf NaN`) {
		promqlWords[w] = true
	}
}

var (
	quoted     = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	braces     = regexp.MustCompile(`\{[^}]*\}`)
	durations  = regexp.MustCompile(`\[[^\]]*\]`)
	identifier = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	groupings  = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
)

// metricNames returns the metric names a PromQL expression reads: the
// identifiers left once strings, label matchers, ranges, groupings and
// PromQL's own words are taken out. Recording rules' names (with a colon)
// are returned too. The expression's syntax is checked elsewhere, by
// Prometheus's own parser (promtool).
func metricNames(expr string) []string {
	e := quoted.ReplaceAllString(expr, `""`)
	e = braces.ReplaceAllString(e, " ")
	e = durations.ReplaceAllString(e, " ")
	e = groupings.ReplaceAllString(e, " ")
	seen := map[string]bool{}
	for _, loc := range identifier.FindAllStringIndex(e, -1) {
		w := e[loc[0]:loc[1]]
		if promqlWords[w] || (loc[0] > 0 && (e[loc[0]-1] >= '0' && e[loc[0]-1] <= '9' || e[loc[0]-1] == '.')) {
			continue // a function, keyword, or a number's exponent/suffix
		}
		rest := strings.TrimLeft(e[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") {
			continue // a function call
		}
		seen[w] = true
	}
	out := make([]string, 0, len(seen))
	for w := range seen {
		out = append(out, w)
	}
	sort.Strings(out)
	return out
}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string]string{
		`vigil_container_health_status{status="unhealthy"} == 1`:                                              "vigil_container_health_status",
		`sum by (node) (rate(vigil_container_cpu_usage_seconds_total{node=~"$node"}[$__rate_interval]))`:      "vigil_container_cpu_usage_seconds_total",
		`vigil_node_up == 0 unless on (node) vigil_node_condition{condition="NodeDown"} == 1`:                 "vigil_node_condition vigil_node_up",
		`histogram_quantile(0.99, sum by (le) (rate(vigil_agent_restart_overhead_seconds_bucket[5m]))) * 1e3`: "vigil_agent_restart_overhead_seconds_bucket",
		`a / on(node, namespace, container) group_left(image) b`:                                              "a b",
	} {
		if got := strings.Join(metricNames(expr), " "); got != want {
			t.Errorf("metricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}

// runCmd runs a command and returns its combined output.
func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
