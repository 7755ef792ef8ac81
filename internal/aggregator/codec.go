package aggregator

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/internal/errdefs"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// The gRPC server decodes agent messages itself, from raw frames: when
// gRPC's codec fails to decode a message, gRPC ends the stream with its own
// Internal status before the handler can say anything. Decoding in the
// handler lets a malformed message end its stream with InvalidArgument and
// a clear message, and gives the exact wire size for the byte counters.

// rawFrame receives one message's bytes undecoded.
type rawFrame struct{ b []byte }

// serverCodec is the server's "proto" codec: protobuf for every message,
// except that a *rawFrame receives the bytes as they are.
type serverCodec struct{}

func (serverCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("codec: cannot marshal %T", v)
	}
	return proto.Marshal(m)
}

func (serverCodec) Unmarshal(data []byte, v any) error {
	if f, ok := v.(*rawFrame); ok {
		f.b = append(f.b[:0], data...) // data is reused by gRPC after return
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("codec: cannot unmarshal into %T", v)
	}
	return proto.Unmarshal(data, m)
}

func (serverCodec) Name() string { return "proto" }

// errMalformed marks a frame that is not an AgentMessage.
var errMalformed = errors.New("malformed message")

// agentConn is what the gateway needs of a Connect stream.
type agentConn interface {
	Context() context.Context
	Send(*vigilv1.AggregatorMessage) error
	// recv returns the next message and its size on the wire.
	recv() (*vigilv1.AgentMessage, int, error)
}

// rawConn decodes frames itself, after checking their strings against
// stringBytes (Quotas.StringBytes): a frame with a longer one is refused
// with a *quotaError before it is decoded.
type rawConn struct {
	grpc.ServerStream
	stringBytes int
}

func (c rawConn) Send(m *vigilv1.AggregatorMessage) error { return c.SendMsg(m) }

func (c rawConn) recv() (*vigilv1.AgentMessage, int, error) {
	var f rawFrame
	if err := c.RecvMsg(&f); err != nil {
		return nil, 0, err
	}
	if err := checkWireStrings(f.b, agentMessageDesc, c.stringBytes); err != nil {
		return nil, len(f.b), err
	}
	m := new(vigilv1.AgentMessage)
	if err := proto.Unmarshal(f.b, m); err != nil {
		return nil, len(f.b), fmt.Errorf("%w: not a vigil.v1.AgentMessage (%d bytes: %v)", errMalformed, len(f.b), err)
	}
	return m, len(f.b), nil
}

// gatewayServiceDesc is AgentGateway's service description with a handler
// that reads raw frames.
var gatewayServiceDesc = grpc.ServiceDesc{
	ServiceName: vigilv1.AgentGateway_ServiceDesc.ServiceName,
	HandlerType: (*vigilv1.AgentGatewayServer)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName: "Connect",
		Handler: func(srv any, stream grpc.ServerStream) error {
			g := srv.(*Gateway)
			return errdefs.GRPC(g.serveConn(rawConn{ServerStream: stream, stringBytes: g.quotas.StringBytes}))
		},
		ServerStreams: true,
		ClientStreams: true,
	}},
	Metadata: vigilv1.AgentGateway_ServiceDesc.Metadata,
}
