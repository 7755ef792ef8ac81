package aggregator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/aggregator"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// TestStreamAndWatcherCaps: one stream more than MaxStreams, and one
// watcher more than MaxWatchers, are refused with ResourceExhausted naming
// the cap; a node already connected may reconnect.
func TestStreamAndWatcherCaps(t *testing.T) {
	h := startAggregator(t, func(c *aggregator.Config) { c.MaxStreams, c.MaxWatchers = 1, 1 })
	a := h.mustConnect("n1", "i1")
	if _, err := h.connect("n2", "n2", "i"); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--max-streams") {
		t.Fatalf("second node: %v, want ResourceExhausted naming --max-streams", err)
	}
	a.close()
	b := h.mustConnect("n1", "i2") // the same node again: not a new stream beyond the cap
	b.send(1, snapshotMsg())
	b.waitAck(1)

	api := vigilv1.NewVigilClient(h.dial("viewer/v"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w1, err := api.WatchEvents(ctx, &vigilv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w1.Header(); err != nil {
		t.Fatal(err)
	}
	w2, err := api.WatchEvents(ctx, &vigilv1.WatchEventsRequest{})
	if err == nil {
		_, err = w2.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--max-watchers") {
		t.Fatalf("second watcher: %v, want ResourceExhausted naming --max-watchers", err)
	}
}

// TestContainerPages: ListContainers and /api/v1/containers page through
// the fleet in order, each container once, and leave probe output out
// unless asked.
func TestContainerPages(t *testing.T) {
	h := startAggregator(t, nil)
	for _, node := range []string{"n1", "n2"} {
		var cs []*vigilv1.Container
		for i := range 7 {
			c := plainContainer(fmt.Sprintf("c%d", i), vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)
			c.Health = &vigilv1.Health{Status: vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY, LastResults: []*vigilv1.ProbeResult{{Ok: true, Output: "probe says hi"}}}
			cs = append(cs, c)
		}
		a := h.mustConnect(node, "i")
		a.send(1, snapshotMsg(cs...))
		a.waitAck(1)
	}
	api := vigilv1.NewVigilClient(h.dial("viewer/v"))
	var seen []string
	req := &vigilv1.ListContainersRequest{PageSize: 4}
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		resp, err := api.ListContainers(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		for _, nc := range resp.GetContainers() {
			seen = append(seen, nc.GetNode()+"/"+nc.GetContainer().GetId())
			if out := nc.GetContainer().GetHealth().GetLastResults()[0].GetOutput(); out != "" {
				t.Fatalf("probe output %q without include_probe_output", out)
			}
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if len(seen) != 14 || seen[0] != "n1/c0" || seen[13] != "n2/c6" {
		t.Fatalf("pages gave %v", seen)
	}
	// The fleet's own message keeps its output; asked for, it is returned.
	resp, err := api.ListContainers(context.Background(), &vigilv1.ListContainersRequest{Node: "n2", PageSize: 1, IncludeProbeOutput: true})
	if err != nil || resp.GetContainers()[0].GetContainer().GetHealth().GetLastResults()[0].GetOutput() != "probe says hi" {
		t.Fatalf("with include_probe_output: %v, %v", resp, err)
	}
	if _, err := api.ListContainers(context.Background(), &vigilv1.ListContainersRequest{PageToken: "!!"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad page token: %v", err)
	}

	// The same over HTTP.
	code, body := getJSON(t, h, "/api/v1/containers?page_size=10&node=n1")
	var page struct {
		Containers    []json.RawMessage `json:"containers"`
		NextPageToken string            `json:"nextPageToken"`
	}
	if err := json.Unmarshal(body, &page); code != 200 || err != nil || len(page.Containers) != 7 || page.NextPageToken != "" {
		t.Fatalf("GET /api/v1/containers?page_size=10&node=n1: %d %s", code, body)
	}
	code, body = getJSON(t, h, "/api/v1/containers?page_size=5")
	if err := json.Unmarshal(body, &page); code != 200 || err != nil || len(page.Containers) != 5 || page.NextPageToken == "" {
		t.Fatalf("first page: %d %s", code, body)
	}
	code, body = getJSON(t, h, "/api/v1/containers?page_size=5&page_token="+page.NextPageToken+"&include_probe_output=true")
	if code != 200 || !strings.Contains(string(body), `"n1"`) || !strings.Contains(string(body), "probe says hi") {
		t.Fatalf("second page: %d %s", code, body)
	}
	// page_size is 0 (the default) to 5000 over HTTP; outside that range
	// it is refused with the same message at both ends, never capped.
	for size, want := range map[string]int{"0": 14, "1": 1, "5000": 14} {
		code, body := getJSON(t, h, "/api/v1/containers?page_size="+size)
		if err := json.Unmarshal(body, &page); code != 200 || err != nil || len(page.Containers) != want {
			t.Fatalf("page_size=%s: %d %s, want %d containers", size, code, body, want)
		}
	}
	for _, size := range []string{"-1", "5001", "99999", "4294967296", "x", ""} {
		code, body := getJSON(t, h, "/api/v1/containers?page_size="+size)
		want := fmt.Sprintf(`page_size=%q is not a number from 0 to 5000`, size)
		var e struct{ Error string }
		if err := json.Unmarshal(body, &e); code != 400 || err != nil || !strings.HasPrefix(e.Error, want) {
			t.Errorf("page_size=%s: %d %s, want 400 saying %s", size, code, body, want)
		}
	}
	// ListContainers over gRPC caps it instead, as its field's comment
	// in vigil.proto promises.
	if resp, err := api.ListContainers(context.Background(), &vigilv1.ListContainersRequest{PageSize: 99999}); err != nil || len(resp.GetContainers()) != 14 {
		t.Fatalf("ListContainers page_size 99999: %d containers, %v; want all 14 (capped at 5000)", len(resp.GetContainers()), err)
	}
}
