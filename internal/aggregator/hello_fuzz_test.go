package aggregator

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// FuzzHello feeds arbitrary first frames of a stream through the hello's
// checks: a frame is refused with ErrInvalid or a quota error, or accepted
// with a valid node name and bounded strings; nothing panics.
func FuzzHello(f *testing.F) {
	for _, m := range []*vigilv1.AgentMessage{
		{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: "node-1", InstanceId: "i", Capabilities: []string{"health"}, ProtocolVersion: 1}}},
		{Body: &vigilv1.AgentMessage_Hello{Hello: &vigilv1.Hello{NodeName: ""}}},
		{Seq: 1, Body: &vigilv1.AgentMessage_Snapshot{Snapshot: &vigilv1.Snapshot{}}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		var q Quotas
		q.setDefaults()
		q.StringBytes = 256
		if err := checkWireStrings(frame, agentMessageDesc, q.StringBytes); err != nil {
			if _, ok := asQuotaError(err); !ok {
				t.Fatalf("wire check error %v is not a quota error", err)
			}
			return
		}
		m := &vigilv1.AgentMessage{}
		if err := proto.Unmarshal(frame, m); err != nil {
			return // refused by the codec with InvalidArgument
		}
		h, err := checkHello(m, &q)
		if err != nil {
			if _, ok := asQuotaError(err); !ok && !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("refusal %v is neither ErrInvalid nor a quota error", err)
			}
			return
		}
		if validNodeName(h.GetNodeName()) != nil {
			t.Fatalf("accepted node name %q", h.GetNodeName())
		}
		for _, s := range append([]string{h.GetInstanceId(), h.GetAgentVersion(), h.GetBootId()}, h.GetCapabilities()...) {
			if len(s) > q.StringBytes {
				t.Fatalf("accepted a string of %d bytes", len(s))
			}
		}
	})
}
