package aggregator

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Defaults of Quotas. They are far above what a real node reports (a
// kubelet node runs at most 110 pods by default, each with a few
// containers and one network namespace) and low enough that a fleet of
// nodes at their caps stays within a machine's memory.
const (
	DefaultQuotaContainers             = 2000
	DefaultQuotaNetworkNamespaces      = 1000
	DefaultQuotaInterfacesPerNamespace = 256
	DefaultQuotaExitPairs              = 64
	DefaultQuotaLabels                 = 256
	// DefaultQuotaStringBytes is containerd's own bound of a label (key and
	// value together), and Docker's of a health probe's output.
	DefaultQuotaStringBytes = 4096
)

// Cap names, the values of the cap label of
// vigil_aggregator_quota_exceeded_total and the names in the errors.
const (
	capContainers             = "containers"
	capNetworkNamespaces      = "network_namespaces"
	capInterfacesPerNamespace = "interfaces_per_namespace"
	capExitPairs              = "exit_pairs"
	capLabels                 = "labels"
	capStringBytes            = "string_bytes"
	capMessageBytes           = "message_bytes"
)

// quotaCaps lists every cap name.
var quotaCaps = []string{capContainers, capNetworkNamespaces, capInterfacesPerNamespace, capExitPairs, capLabels, capStringBytes, capMessageBytes}

// Quotas bound what one node may make the aggregator hold, so that one
// broken or hostile agent cannot grow it without bound. A message that
// would take a node over a cap ends that node's stream with
// ResourceExhausted naming the cap, its value and the flag that sets it;
// nothing of the message is applied, and every other node carries on.
// Zero fields take their defaults.
type Quotas struct {
	// Containers a node may report (sandboxes included). Default 2000.
	Containers int
	// NetworkNamespaces a node may report (host included). Default 1000.
	NetworkNamespaces int
	// InterfacesPerNamespace a namespace may hold. Default 256.
	InterfacesPerNamespace int
	// ExitPairs is how many distinct exit (reason, code) pairs one
	// container's counters may hold: each is a series. Default 64.
	ExitPairs int
	// Labels is how many labels one container may carry. Default 256.
	Labels int
	// StringBytes bounds every string of a message (names, label keys and
	// values, probe output, reasons): what reaches /metrics or the API.
	// Default 4096.
	StringBytes int
}

func (q *Quotas) setDefaults() {
	for _, f := range []struct {
		v *int
		d int
	}{
		{&q.Containers, DefaultQuotaContainers}, {&q.NetworkNamespaces, DefaultQuotaNetworkNamespaces},
		{&q.InterfacesPerNamespace, DefaultQuotaInterfacesPerNamespace}, {&q.ExitPairs, DefaultQuotaExitPairs},
		{&q.Labels, DefaultQuotaLabels}, {&q.StringBytes, DefaultQuotaStringBytes},
	} {
		if *f.v == 0 {
			*f.v = f.d
		}
	}
}

func (q *Quotas) validate() error {
	if q.Containers < 1 || q.NetworkNamespaces < 1 || q.InterfacesPerNamespace < 1 || q.ExitPairs < 1 || q.Labels < 1 || q.StringBytes < 256 {
		return fmt.Errorf("quotas must be positive and string bytes at least 256: %+v", *q)
	}
	return nil
}

// flagOf names the aggregator flag that sets a cap.
var flagOf = map[string]string{
	capContainers:             "--max-containers-per-node",
	capNetworkNamespaces:      "--max-netns-per-node",
	capInterfacesPerNamespace: "--max-interfaces-per-netns",
	capExitPairs:              "--max-exit-pairs-per-container",
	capLabels:                 "--max-labels-per-container",
	capStringBytes:            "--max-string-bytes",
	capMessageBytes:           "--max-message-bytes",
}

// quotaError is a message over a cap.
type quotaError struct {
	cap   string
	value int
	limit int
	where string
}

func (e *quotaError) Error() string {
	return fmt.Sprintf("quota %s exceeded: %s is %d, the cap is %d (%s)", e.cap, e.where, e.value, e.limit, flagOf[e.cap])
}

// GRPCStatus makes the stream end with ResourceExhausted.
func (e *quotaError) GRPCStatus() *status.Status {
	return status.New(codes.ResourceExhausted, e.Error())
}

func asQuotaError(err error) (*quotaError, bool) {
	var q *quotaError
	ok := errors.As(err, &q)
	return q, ok
}

// checkMessage checks the caps that a decoded message alone can break:
// labels and exit pairs per container, namespaces and interfaces in a
// message. String lengths are checked on the wire before decoding
// (checkWireStrings); the caps that depend on what the node holds
// (containers, interfaces added by events) where the message is applied.
func (q *Quotas) checkMessage(m *vigilv1.AgentMessage) error {
	checkContainer := func(c *vigilv1.Container) error {
		if n := len(c.GetLabels()); n > q.Labels {
			return &quotaError{cap: capLabels, value: n, limit: q.Labels, where: "labels of container " + c.GetId()}
		}
		if n := len(c.GetCounters().GetExits()); n > q.ExitPairs {
			return &quotaError{cap: capExitPairs, value: n, limit: q.ExitPairs, where: "exit (reason, code) pairs of container " + c.GetId()}
		}
		return nil
	}
	checkNetwork := func(nss []*vigilv1.NetworkNamespace) error {
		if n := len(nss); n > q.NetworkNamespaces {
			return &quotaError{cap: capNetworkNamespaces, value: n, limit: q.NetworkNamespaces, where: "network namespaces"}
		}
		for _, ns := range nss {
			if n := len(ns.GetInterfaces()); n > q.InterfacesPerNamespace {
				return &quotaError{cap: capInterfacesPerNamespace, value: n, limit: q.InterfacesPerNamespace, where: fmt.Sprintf("interfaces of network namespace %d", ns.GetInode())}
			}
		}
		return nil
	}
	switch b := m.GetBody().(type) {
	case *vigilv1.AgentMessage_Snapshot:
		if n := len(b.Snapshot.GetContainers()); n > q.Containers {
			return &quotaError{cap: capContainers, value: n, limit: q.Containers, where: "containers in the snapshot"}
		}
		for _, c := range b.Snapshot.GetContainers() {
			if err := checkContainer(c); err != nil {
				return err
			}
		}
		return checkNetwork(b.Snapshot.GetNetwork())
	case *vigilv1.AgentMessage_ContainerEvent:
		return checkContainer(b.ContainerEvent.GetContainer())
	case *vigilv1.AgentMessage_NetworkSamples:
		return checkNetwork(b.NetworkSamples.GetNamespaces())
	case *vigilv1.AgentMessage_ResourceSamples:
		if n := len(b.ResourceSamples.GetSamples()); n > q.Containers {
			return &quotaError{cap: capContainers, value: n, limit: q.Containers, where: "resource samples in one batch"}
		}
	}
	return nil
}

// agentMessageDesc describes the frames checkWireStrings reads.
var agentMessageDesc = (&vigilv1.AgentMessage{}).ProtoReflect().Descriptor()

// checkWireStrings checks the length of every string and bytes field of an
// encoded AgentMessage, nested messages and map entries included, on the
// wire, before it is decoded: a 1 MiB label is refused without being
// copied into a Go string, and the walk allocates nothing (a reflective
// walk of the decoded message cost 2 to 5 times its decoding:
// BenchmarkQuotaCheck). A frame that does not parse is left to the
// decoder, which refuses it with its own error.
func checkWireStrings(b []byte, md protoreflect.MessageDescriptor, limit int) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return nil
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil {
			continue // unknown fields are dropped by the decoder
		}
		switch fd.Kind() {
		case protoreflect.StringKind, protoreflect.BytesKind:
			if len(v) > limit {
				return &quotaError{cap: capStringBytes, value: len(v), limit: limit, where: "length of " + string(fd.FullName())}
			}
		case protoreflect.MessageKind:
			if err := checkWireStrings(v, fd.Message(), limit); err != nil {
				return err
			}
		}
	}
	return nil
}
