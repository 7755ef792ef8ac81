package gossip

import (
	"fmt"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Health is what an agent says about a local dependency (containerd).
type Health uint8

// Health values. Unknown is also what an older or newer peer's value that
// this build does not know decodes to.
const (
	HealthUnknown Health = iota
	HealthOK
	HealthUnavailable
)

func (h Health) String() string {
	switch h {
	case HealthOK:
		return "ok"
	case HealthUnavailable:
		return "unavailable"
	}
	return "unknown"
}

// Meta is the metadata a member advertises with every alive message: a few
// dozen bytes (memberlist allows 512).
type Meta struct {
	// AgentVersion is the agent's build version, cut to MaxVersionLen.
	AgentVersion string
	// StreamUp: the agent's stream to the aggregator is up.
	StreamUp bool
	// Containerd is containerd's health as the agent sees it.
	Containerd Health
	// Leaving: the member is leaving on purpose (set just before
	// memberlist's Leave, so that peers tell "left" from "dead").
	Leaving bool
}

// MaxVersionLen bounds Meta.AgentVersion on the wire.
const MaxVersionLen = 64

// metaVersion is the encoding's version. Version 1 is:
//
//	byte 0: version (1)
//	byte 1: flags: bit 0 StreamUp, bit 1 Leaving; other bits reserved (0)
//	byte 2: containerd Health
//	byte 3: n, the length of the agent version (at most MaxVersionLen)
//	bytes 4..4+n: the agent version
//
// Later versions may only append fields after these (a v1 decoder ignores
// trailing bytes) and use reserved flag bits; a change that a v1 decoder
// would misread needs a new version byte, which v1 decoders refuse.
const metaVersion = 1

const metaHeaderLen = 4

// Encode returns m's wire form.
func (m Meta) Encode() []byte {
	v := m.AgentVersion
	if len(v) > MaxVersionLen {
		v = v[:MaxVersionLen]
	}
	var flags byte
	if m.StreamUp {
		flags |= 1
	}
	if m.Leaving {
		flags |= 2
	}
	b := make([]byte, 0, metaHeaderLen+len(v))
	b = append(b, metaVersion, flags, byte(m.Containerd), byte(len(v)))
	return append(b, v...)
}

// DecodeMeta parses a peer's metadata. It never panics; malformed input is
// an error wrapping errdefs.ErrInvalid that says what was wrong. An empty
// input (a member that advertises none) is the zero Meta and no error.
func DecodeMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return Meta{}, nil
	}
	bad := func(format string, args ...any) (Meta, error) {
		return Meta{}, fmt.Errorf("gossip metadata: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalid)
	}
	if b[0] != metaVersion {
		return bad("version %d, this build reads version %d", b[0], metaVersion)
	}
	if len(b) < metaHeaderLen {
		return bad("%d bytes, shorter than the %d-byte header", len(b), metaHeaderLen)
	}
	n := int(b[3])
	if n > MaxVersionLen {
		return bad("agent version of %d bytes, more than %d", n, MaxVersionLen)
	}
	if len(b) < metaHeaderLen+n {
		return bad("agent version of %d bytes, %d present", n, len(b)-metaHeaderLen)
	}
	h := Health(b[2])
	if h > HealthUnavailable {
		h = HealthUnknown
	}
	return Meta{
		StreamUp:     b[1]&1 != 0,
		Leaving:      b[1]&2 != 0,
		Containerd:   h,
		AgentVersion: string(b[metaHeaderLen : metaHeaderLen+n]),
	}, nil
}
