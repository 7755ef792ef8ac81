package statedir

import (
	"encoding/json"
	"testing"
)

// FuzzStateFile: whatever is in the state file, decoding either fails with
// an error or yields a state that writes back and decodes to the same.
func FuzzStateFile(f *testing.F) {
	f.Add([]byte(`{"version":2,"counters":{},"containers":{},"commands":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, _, err := decode(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(&d)
		if err != nil {
			t.Fatalf("decoded state does not encode: %v", err)
		}
		d2, _, err := decode(out)
		if err != nil {
			t.Fatalf("re-encoded state does not decode: %v\n%s", err, out)
		}
		out2, _ := json.Marshal(&d2)
		if string(out) != string(out2) {
			t.Fatalf("round trip changed the state:\n%s\n%s", out, out2)
		}
	})
}
