package aggregator_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vigilhq/vigil/internal/aggregator"
	"github.com/vigilhq/vigil/internal/errdefs"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

func filterScene(h *harness) {
	a := h.mustConnect("n1", "i1")
	healthy := plainContainer("c-run", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)
	healthy.Health.Status = vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY
	stopped := plainContainer("c-stop", vigilv1.ContainerState_CONTAINER_STATE_STOPPED, 2)
	pod := func(id string, sandbox bool) *vigilv1.Container {
		c := plainContainer(id, vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)
		c.Namespace = "k8s.io"
		c.Pod = &vigilv1.PodIdentity{Namespace: "shop", Name: "web", Sandbox: sandbox}
		if !sandbox {
			c.Pod.ContainerName = "nginx"
			c.Health.Status = vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY
		}
		return c
	}
	a.send(1, snapshotMsg(healthy, stopped, pod("web-sb", true), pod("web-nginx", false)))
	a.waitAck(1)
	b := h.mustConnect("n2", "i1")
	b.send(1, snapshotMsg(plainContainer("c-other", vigilv1.ContainerState_CONTAINER_STATE_RUNNING, 0)))
	b.waitAck(1)
}

func ids(cs []*vigilv1.NodeContainer) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.GetNode()+"/"+c.GetContainer().GetId())
	}
	return out
}

func TestListContainersFilters(t *testing.T) {
	h := startAggregator(t, nil)
	filterScene(h)
	api := vigilv1.NewVigilClient(h.dial("viewer/op"))
	for _, tc := range []struct {
		name string
		req  *vigilv1.ListContainersRequest
		want []string
	}{
		{"all but sandboxes, sorted", &vigilv1.ListContainersRequest{}, []string{"n1/c-run", "n1/c-stop", "n1/web-nginx", "n2/c-other"}},
		{"sandboxes included", &vigilv1.ListContainersRequest{IncludeSandboxes: true}, []string{"n1/c-run", "n1/c-stop", "n1/web-nginx", "n1/web-sb", "n2/c-other"}},
		{"node", &vigilv1.ListContainersRequest{Node: "n2"}, []string{"n2/c-other"}},
		{"namespace", &vigilv1.ListContainersRequest{Namespace: "k8s.io"}, []string{"n1/web-nginx"}},
		{"pod", &vigilv1.ListContainersRequest{Pod: "web", IncludeSandboxes: true}, []string{"n1/web-nginx", "n1/web-sb"}},
		{"state", &vigilv1.ListContainersRequest{State: vigilv1.ContainerState_CONTAINER_STATE_STOPPED}, []string{"n1/c-stop"}},
		{"health", &vigilv1.ListContainersRequest{Health: vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY}, []string{"n1/web-nginx"}},
		{"no match", &vigilv1.ListContainersRequest{Node: "n9"}, nil},
	} {
		resp, err := api.ListContainers(context.Background(), tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := ids(resp.GetContainers()); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	_, err := api.ListContainers(context.Background(), &vigilv1.ListContainersRequest{State: 42})
	if !errors.Is(errdefs.FromGRPC(err), errdefs.ErrInvalid) {
		t.Errorf("state 42: got %v, want InvalidArgument", err)
	}
	nodes, err := api.ListNodes(context.Background(), &vigilv1.ListNodesRequest{})
	if err != nil || len(nodes.GetNodes()) != 2 || nodes.GetNodes()[0].GetContainerCount() != 4 {
		t.Fatalf("ListNodes: %v %v", nodes, err)
	}
}

// getJSON GETs path over HTTPS as a viewer.
func getJSON(t *testing.T, h *harness, path string) (int, []byte) {
	t.Helper()
	resp, err := h.httpsClient("viewer/v").Get(h.httpsURL(path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestJSONEndpoints(t *testing.T) {
	h := startAggregator(t, nil)
	filterScene(h)

	code, body := getJSON(t, h, "/api/v1/containers?state=running&namespace=default")
	if code != 200 {
		t.Fatalf("containers: %d %s", code, body)
	}
	var resp vigilv1.ListContainersResponse
	if err := protojson.Unmarshal(body, &resp); err != nil {
		t.Fatalf("containers JSON: %v\n%s", err, body)
	}
	if got := ids(resp.GetContainers()); !slices.Equal(got, []string{"n1/c-run", "n2/c-other"}) {
		t.Fatalf("running in default: %v", got)
	}
	code, body = getJSON(t, h, "/api/v1/containers?health=UNHEALTHY&pod=web&node=n1")
	if err := protojson.Unmarshal(body, &resp); code != 200 || err != nil || !slices.Equal(ids(resp.GetContainers()), []string{"n1/web-nginx"}) {
		t.Fatalf("unhealthy in pod web: %d %s %v", code, body, err)
	}

	code, body = getJSON(t, h, "/api/v1/nodes")
	var nodes vigilv1.ListNodesResponse
	if err := protojson.Unmarshal(body, &nodes); code != 200 || err != nil || len(nodes.GetNodes()) != 2 || nodes.GetNodes()[0].GetName() != "n1" {
		t.Fatalf("nodes: %d %s %v", code, body, err)
	}

	for _, tc := range []struct{ path, want string }{
		{"/api/v1/containers?state=bogus", `state: "bogus" is not one of created, paused, running, stopped`},
		{"/api/v1/containers?health=sick", `health: "sick" is not one of`},
		{"/api/v1/containers?colour=red", `unknown query parameter "colour"`},
		{"/api/v1/containers?include_sandboxes=maybe", `include_sandboxes="maybe" is not a boolean`},
		{"/api/v1/containers?node=a&node=b", `"node" is given 2 times`},
	} {
		code, body := getJSON(t, h, tc.path)
		var e struct{ Error string }
		if err := json.Unmarshal(body, &e); code != 400 || err != nil || !strings.Contains(e.Error, tc.want) {
			t.Errorf("GET %s: %d %s, want 400 with a JSON error saying %q", tc.path, code, body, tc.want)
		}
	}
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/healthz", 200}, {"/readyz", 200}, {"/metrics?shard=4&shards=4", 400}, {"/metrics?shard=1", 400}, {"/metrics?x=1", 400},
	} {
		if code, body := getJSON(t, h, tc.path); code != tc.code {
			t.Errorf("GET %s: %d %s, want %d", tc.path, code, body, tc.code)
		}
	}
}

// TestListEndpointsCarryEmptyLists: on an empty fleet and an empty journal
// each list endpoint still has its list field, [] ({"nodes":[]}, not the
// {} protojson writes for an empty repeated field); so does a filter that
// matches nothing on a fleet that is not empty; and a list that is not
// empty has it once.
func TestListEndpointsCarryEmptyLists(t *testing.T) {
	h, _ := startRemediating(t, "")
	compact := func(path string) string {
		t.Helper()
		code, body := getJSON(t, h, path)
		var b bytes.Buffer
		if err := json.Compact(&b, body); code != 200 || err != nil {
			t.Fatalf("GET %s: %d %s (%v)", path, code, body, err)
		}
		return b.String()
	}
	for path, want := range map[string]string{
		"/api/v1/nodes":        `{"nodes":[]}`,
		"/api/v1/containers":   `{"containers":[]}`,
		"/api/v1/remediations": `{"remediations":[]}`,
	} {
		if got := compact(path); got != want {
			t.Errorf("GET %s on an empty fleet: %s, want %s", path, got, want)
		}
	}

	filterScene(h)
	if got := compact("/api/v1/containers?node=n9"); got != `{"containers":[]}` {
		t.Errorf("containers of an unknown node: %s, want {\"containers\":[]}", got)
	}
	if got := compact("/api/v1/nodes"); strings.Count(got, `"nodes":`) != 1 || !strings.HasPrefix(got, `{"nodes":[{"name":"n1"`) {
		t.Errorf("nodes of a fleet: %s, want one nodes list", got)
	}
}

func TestParseContainerQuery(t *testing.T) {
	q, err := aggregator.ParseContainerQuery(url.Values{"state": {"CONTAINER_STATE_PAUSED"}, "health": {"Starting"}, "include_sandboxes": {"1"}})
	if err != nil {
		t.Fatal(err)
	}
	if q.GetState() != vigilv1.ContainerState_CONTAINER_STATE_PAUSED || q.GetHealth() != vigilv1.HealthStatus_HEALTH_STATUS_STARTING || !q.GetIncludeSandboxes() {
		t.Fatalf("got %v", q)
	}
	if _, err := aggregator.ParseContainerQuery(url.Values{"state": {"unspecified"}}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("state=unspecified: %v, want ErrInvalid", err)
	}
}

// FuzzParseContainerQuery: any query string either fails with ErrInvalid or
// yields valid enum values and a page size within the bounds.
func FuzzParseContainerQuery(f *testing.F) {
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := aggregator.ParseContainerQuery(v)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if _, ok := vigilv1.ContainerState_name[int32(q.GetState())]; !ok {
			t.Fatalf("state %d out of range", q.GetState())
		}
		if _, ok := vigilv1.HealthStatus_name[int32(q.GetHealth())]; !ok {
			t.Fatalf("health %d out of range", q.GetHealth())
		}
		if q.GetPageSize() > aggregator.MaxPageSize {
			t.Fatalf("page_size %d accepted, over %d", q.GetPageSize(), aggregator.MaxPageSize)
		}
	})
}

func TestMetricsGzipOnlyWhenEnabled(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		h := startAggregator(t, func(c *aggregator.Config) { c.MetricsGzip = enabled })
		filterScene(h)
		req, _ := http.NewRequest("GET", h.url("/metrics"), nil)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := http.DefaultTransport.RoundTrip(req) // no transparent decompression
		if err != nil {
			t.Fatal(err)
		}
		var body io.Reader = resp.Body
		if got := resp.Header.Get("Content-Encoding") == "gzip"; got != enabled {
			t.Fatalf("MetricsGzip=%v: Content-Encoding %q", enabled, resp.Header.Get("Content-Encoding"))
		}
		if enabled {
			zr, err := gzip.NewReader(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = zr
		}
		text, err := io.ReadAll(body)
		resp.Body.Close()
		if err != nil || !strings.Contains(string(text), `vigil_container_info{node="n1"`) {
			t.Fatalf("MetricsGzip=%v: body %v %.200s", enabled, err, text)
		}
	}
}
