package metrics_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/metrics"
)

const (
	docBegin = "<!-- generated: begin -->\n"
	docEnd   = "<!-- generated: end -->"
)

// TestReferenceDoc: docs/metrics.md's table is the code's list of families,
// both ways (-update rewrites it).
func TestReferenceDoc(t *testing.T) {
	for _, d := range metrics.Reference() {
		if d.Labels == "" {
			t.Errorf("%s: no labels documented (reference.go)", d.Name)
		}
	}
	path := filepath.Join("..", "..", "docs", "metrics.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	begin, end := strings.Index(doc, docBegin), strings.Index(doc, docEnd)
	if begin < 0 || end < begin {
		t.Fatalf("%s: no generated block (%q ... %q)", path, docBegin, docEnd)
	}
	want := metrics.ReferenceMarkdown()
	if got := doc[begin+len(docBegin) : end]; got != want {
		if *update {
			if err := os.WriteFile(path, []byte(doc[:begin+len(docBegin)]+want+doc[end:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("%s differs from the code's families (go test -run TestReferenceDoc -update rewrites it):\n--- doc\n%s\n--- code\n%s", path, got, want)
	}
}
