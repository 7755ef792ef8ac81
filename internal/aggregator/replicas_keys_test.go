package aggregator

import "testing"

// TestHolderKeyRoundTrip: a node name with a slash, a percent sign or
// spaces makes one key under nodes/ and comes back from it; other keys
// under nodes/ name no node.
func TestHolderKeyRoundTrip(t *testing.T) {
	for _, node := range []string{"n1", "a/b", "100%", "node with spaces", "ü.example"} {
		k := holderKey(node)
		if got := nodeOfHolderKey(k); got != node {
			t.Errorf("holderKey(%q) = %q, read back as %q", node, k, got)
		}
	}
	for _, k := range []string{"nodes/n1", "nodes/a/b/holder", "replicas/r0", "nodes//holder/x", "nodes/%zz/holder"} {
		if got := nodeOfHolderKey(k); got != "" {
			t.Errorf("nodeOfHolderKey(%q) = %q, want none", k, got)
		}
	}
}
