package aggregator

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestWireStrings: a string over the cap is found wherever it is nested
// (map values and keys, repeated messages, oneofs), and nothing else is.
func TestWireStrings(t *testing.T) {
	long := strings.Repeat("x", 300)
	for _, tc := range []struct {
		name  string
		m     *vigilv1.AgentMessage
		field string
	}{
		{"label value", &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Snapshot{Snapshot: &vigilv1.Snapshot{Containers: []*vigilv1.Container{{Id: "a"}, {Id: "b", Labels: map[string]string{"k": long}}}}}}, "vigil.v1.Container.LabelsEntry.value"},
		{"label key", &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: &vigilv1.ContainerEvent{Container: &vigilv1.Container{Labels: map[string]string{long: "v"}}}}}, "vigil.v1.Container.LabelsEntry.key"},
		{"probe output", &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_ContainerEvent{ContainerEvent: &vigilv1.ContainerEvent{Container: &vigilv1.Container{Health: &vigilv1.Health{LastResults: []*vigilv1.ProbeResult{{Output: long}}}}}}}, "vigil.v1.ProbeResult.output"},
		{"interface address", &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_NetworkSamples{NetworkSamples: &vigilv1.NetworkSamples{Namespaces: []*vigilv1.NetworkNamespace{{Interfaces: []*vigilv1.Interface{{Addresses: []string{"1", long}}}}}}}}, "vigil.v1.Interface.addresses"},
		{"hello node", &vigilv1.AgentMessage{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: long}}}, "vigil.v1.Hello.node_name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			err = checkWireStrings(b, agentMessageDesc, 256)
			q, ok := asQuotaError(err)
			if !ok || q.value != 300 || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), "--max-string-bytes") {
				t.Fatalf("err = %v, want a string_bytes quota error naming %s", err, tc.field)
			}
			if err := checkWireStrings(b, agentMessageDesc, 300); err != nil {
				t.Fatalf("at the cap: %v", err)
			}
		})
	}
}
