package container

import (
	"go/build"
	"slices"
	"strings"
	"testing"
)

func TestKeyString(t *testing.T) {
	if got := (Key{Namespace: "k8s.io", ID: "0a1b2c"}).String(); got != "k8s.io/0a1b2c" {
		t.Errorf("String = %q", got)
	}
	if got := (Key{}).String(); got != "/" {
		t.Errorf("zero Key's String = %q", got)
	}
}

func TestCompare(t *testing.T) {
	keys := []Key{{"b", "a"}, {"a", "z"}, {"a", "b"}, {"ab", ""}, {"a", "b"}}
	slices.SortFunc(keys, Compare)
	want := []Key{{"a", "b"}, {"a", "b"}, {"a", "z"}, {"ab", ""}, {"b", "a"}}
	if !slices.Equal(keys, want) {
		t.Errorf("sorted %v, want %v", keys, want)
	}
	// The namespace decides first, even where the strings would sort the
	// other way ("a-/b" < "a/z" byte-wise: '-' < '/').
	if Compare(Key{"a", "z"}, Key{"a-", "b"}) >= 0 || (Key{"a", "z"}).String() < (Key{"a-", "b"}).String() {
		t.Error("namespace a does not sort before namespace a-")
	}
}

// The package stays a leaf: every package that names a container imports
// it, so it must bring in nothing but the standard library (the metrics
// renderer must not link the runtime or containerd through it).
func TestLeaf(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if first, _, _ := strings.Cut(imp, "/"); strings.Contains(first, ".") {
			t.Errorf("package container imports %s: only the standard library may be imported", imp)
		}
	}
}
