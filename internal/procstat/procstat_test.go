package procstat

import (
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	line := []byte("4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 164 0 0 0 300 150 0 0 20 0 7 0 123456 4476928 202 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")
	st, ok := Parse(line)
	want := Stat{UTime: 300, STime: 150, Threads: 7, StartTicks: 123456, VSize: 4476928, RSSPages: 202}
	if !ok || st != want {
		t.Errorf("Parse = %+v, %v; want %+v", st, ok, want)
	}
	if st.CPUSeconds() != 4.5 {
		t.Errorf("CPUSeconds = %v, want 4.5", st.CPUSeconds())
	}
	for _, bad := range []string{"", "1 (x) S 1", "no parenthesis at all 1 2 3"} {
		if _, ok := Parse([]byte(bad)); ok {
			t.Errorf("Parse(%q) ok", bad)
		}
	}
}

// TestReadSelf checks the figures of this very process against what the
// process knows of itself.
func TestReadSelf(t *testing.T) {
	st, ok := Read("self")
	if !ok {
		t.Fatal("cannot read /proc/self/stat")
	}
	if st.Threads < 1 || st.RSSBytes() < 1<<20 || st.VSize < st.RSSBytes() {
		t.Errorf("implausible: %+v (RSS %d bytes)", st, st.RSSBytes())
	}
	// The process started shortly before this package was initialised (the
	// boot time has whole seconds, hence the second of slack).
	if s := st.StartTime(); s.After(initialised.Add(time.Second)) || s.Before(initialised.Add(-time.Minute)) {
		t.Errorf("start time %v, package initialised at %v", s, initialised)
	}
}

var initialised = time.Now()

func FuzzParse(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzParse.
	f.Fuzz(func(t *testing.T, b []byte) {
		st, ok := Parse(b)
		if !ok && st != (Stat{}) {
			t.Fatalf("a refused line gave %+v", st)
		}
	})
}
