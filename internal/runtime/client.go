package runtime

import (
	"fmt"
	"strings"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// maxMsgSize bounds a gRPC message either way, as containerd's own client
// does (16 MiB): a containers.List answer grows with the number of
// containers and the size of their specs.
const maxMsgSize = 16 << 20

// apiClient is one connection to containerd (gRPC over its unix socket) and
// the service clients the package uses on it. The service clients are
// stateless stubs around conn.
type apiClient struct {
	conn       *grpc.ClientConn
	version    versionapi.VersionClient
	events     eventsapi.EventsClient
	namespaces namespacesapi.NamespacesClient
	containers containersapi.ContainersClient
	tasks      tasksapi.TasksClient
	images     imagesapi.ImagesClient
	content    contentapi.ContentClient
	snapshots  snapshotsapi.SnapshotsClient
}

// socketPath is address without a unix:// prefix.
func socketPath(address string) string { return strings.TrimPrefix(address, "unix://") }

// dial makes a client for containerd's socket at address. Nothing is
// connected yet: the first call connects, and reconnects are gRPC's (with
// backoff capped at timeout) until the caller closes the client.
func dial(address string, timeout time.Duration) (*apiClient, error) {
	bc := backoff.DefaultConfig
	bc.MaxDelay = timeout
	target := "unix:" + socketPath(address) // gRPC's own unix resolver and dialer
	if strings.HasPrefix(socketPath(address), "/") {
		target = "unix://" + socketPath(address)
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bc, MinConnectTimeout: timeout}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)),
		// gRPC keeps a 32 KiB read and a 32 KiB write buffer per
		// connection for its lifetime. The agent's calls to containerd are
		// few once the inventory is loaded (usage comes from cgroup files),
		// so the write buffer is borrowed from a pool for each flush and the
		// read buffer is small: 60 KiB less heap, for a few more syscalls on
		// the rare large answer.
		grpc.WithSharedWriteBuffer(true),
		grpc.WithReadBufferSize(4<<10),
	)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	return &apiClient{
		conn:       conn,
		version:    versionapi.NewVersionClient(conn),
		events:     eventsapi.NewEventsClient(conn),
		namespaces: namespacesapi.NewNamespacesClient(conn),
		containers: containersapi.NewContainersClient(conn),
		tasks:      tasksapi.NewTasksClient(conn),
		images:     imagesapi.NewImagesClient(conn),
		content:    contentapi.NewContentClient(conn),
		snapshots:  snapshotsapi.NewSnapshotsClient(conn),
	}, nil
}

func (c *apiClient) Close() error { return c.conn.Close() }

// protoTime is ts as a time.Time, the zero time when ts is not set.
func protoTime(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
