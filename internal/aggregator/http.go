package aggregator

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/metrics"
	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Handler returns the aggregator's HTTP endpoints (the handler of its
// HTTP listener; HandleAPI adds routes to it):
//
//	GET /metrics[?shard=I&shards=N]  fleet series of the nodes in shard I of N
//	                                 (all nodes without parameters); shard 0
//	                                 and the unsharded form also carry the
//	                                 self-metrics and fleet-level series.
//	GET /healthz                     200 while the process runs.
//	GET /readyz                      200 once serving, 503 before and while
//	                                 shutting down.
//	GET /api/v1/nodes                ListNodesResponse as JSON.
//	GET /api/v1/containers           ListContainersResponse as JSON; query
//	                                 parameters node, namespace, pod, state,
//	                                 health, include_sandboxes, page_size
//	                                 (0 to MaxPageSize, else 400),
//	                                 page_token, include_probe_output.
//
// Both are protojson (camelCase names, enum values by name) with the list
// field always present, [] when empty (writeProtoJSON).
//
// /api/v1/* needs TLS and a credential (a client certificate with a role,
// or a bearer token from Config.APITokens): 401 without one, 403 with one
// whose role is not enough (viewer for these reads). /metrics, /healthz
// and /readyz are plain, as Prometheus exporters' are, unless
// Config.MetricsRequireAuth puts /metrics behind the same check.
// In insecure mode nothing is checked (loopback only).
func (a *Aggregator) Handler() http.Handler { return a.mux }

// HandleAPI adds a route to the HTTP listener behind the same TLS and
// credential check as /api/v1/*, needing role need (an operator may do
// what a viewer or the alertmanager role may). pattern is an
// http.ServeMux pattern ("POST /api/v1/alerts"). The handler finds the
// caller with Caller(r.Context()). Call it before Run; it panics, as
// ServeMux does, on a pattern that conflicts with one registered.
func (a *Aggregator) HandleAPI(pattern string, need pki.Role, h http.Handler) {
	a.mux.Handle(pattern, a.auth.requireHTTP(pattern, need, h))
}

func (a *Aggregator) routes() *http.ServeMux {
	mux := http.NewServeMux()
	a.mux = mux
	var metricsHandler http.Handler = http.HandlerFunc(a.serveMetrics)
	if a.cfg.MetricsRequireAuth {
		metricsHandler = a.auth.requireHTTP("GET /metrics", pki.RoleViewer, metricsHandler)
	}
	mux.Handle("GET /metrics", metricsHandler)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	a.HandleAPI("GET /api/v1/nodes", pki.RoleViewer, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.Query()) > 0 {
			writeJSONError(w, http.StatusBadRequest, "/api/v1/nodes takes no query parameters")
			return
		}
		nodes, partial := a.api.fleetNodes(r.Context())
		if partial != "" {
			w.Header().Set(partialHTTPHeader, partial)
		}
		writeProtoJSON(w, &vigilv1.ListNodesResponse{Nodes: nodes})
	}))
	a.HandleAPI("GET /api/v1/containers", pki.RoleViewer, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, err := ParseContainerQuery(r.URL.Query())
		if err != nil {
			writeJSONError(w, http.StatusBadRequest, err.Error())
			return
		}
		resp, partial, err := a.api.listContainers(r.Context(), q)
		if err != nil {
			writeJSONError(w, http.StatusBadRequest, err.Error())
			return
		}
		if partial != "" {
			w.Header().Set(partialHTTPHeader, partial)
		}
		writeProtoJSON(w, resp)
	}))
	return mux
}

// writeProtoJSON writes m in protojson's form (camelCase field names, enum
// values by name, unset fields left out), except that each list field of
// m itself is always there, [] when empty ({"nodes":[]}, not {}): a client
// reading a list endpoint must find its list.
func writeProtoJSON(w http.ResponseWriter, m proto.Message) {
	b, err := protojson.Marshal(m)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(withEmptyLists(b, m))
}

// withEmptyLists adds to b, m's protojson form, the empty list fields of m
// that protojson left out.
func withEmptyLists(b []byte, m proto.Message) []byte {
	var empty []string
	msg := m.ProtoReflect()
	fields := msg.Descriptor().Fields()
	for i := range fields.Len() {
		if f := fields.Get(i); f.IsList() && msg.Get(f).List().Len() == 0 {
			empty = append(empty, strconv.Quote(f.JSONName())+":[]")
		}
	}
	rest := bytes.TrimSpace(b)
	if len(empty) == 0 || len(rest) == 0 || rest[0] != '{' {
		return b
	}
	rest = bytes.TrimSpace(rest[1:])
	out := append([]byte("{"), strings.Join(empty, ",")...)
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// ParseContainerQuery parses the query parameters of GET /api/v1/containers:
// node, namespace, pod (exact values), state (created, running, paused,
// stopped), health (none, starting, healthy, unhealthy; case-insensitive,
// the enum's full names accepted too), include_sandboxes and
// include_probe_output (booleans), page_size (0 to MaxPageSize; 0 is
// DefaultPageSize) and page_token.
// Unknown or repeated parameters and bad values are errors wrapping
// errdefs.ErrInvalid that say what was wrong.
func ParseContainerQuery(v url.Values) (*vigilv1.ListContainersRequest, error) {
	q := &vigilv1.ListContainersRequest{}
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		vals := v[k]
		if len(vals) != 1 {
			return nil, fmt.Errorf("query parameter %q is given %d times; give it once: %w", k, len(vals), errdefs.ErrInvalid)
		}
		val := vals[0]
		switch k {
		case "node":
			q.Node = val
		case "namespace":
			q.Namespace = val
		case "pod":
			q.Pod = val
		case "state":
			s, err := parseEnum(val, "CONTAINER_STATE_", vigilv1.ContainerState_value)
			if err != nil {
				return nil, fmt.Errorf("state: %w", err)
			}
			q.State = vigilv1.ContainerState(s)
		case "health":
			h, err := parseEnum(val, "HEALTH_STATUS_", vigilv1.HealthStatus_value)
			if err != nil {
				return nil, fmt.Errorf("health: %w", err)
			}
			q.Health = vigilv1.HealthStatus(h)
		case "include_sandboxes", "include_probe_output":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return nil, fmt.Errorf("%s=%q is not a boolean (true or false): %w", k, val, errdefs.ErrInvalid)
			}
			if k == "include_sandboxes" {
				q.IncludeSandboxes = b
			} else {
				q.IncludeProbeOutput = b
			}
		case "page_size":
			// Refused out of range, not capped: the caller asked for
			// what it cannot have (ListContainers over gRPC caps it, as
			// its field's comment says).
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil || n > MaxPageSize {
				return nil, fmt.Errorf("page_size=%q is not a number from 0 to %d: %w", val, MaxPageSize, errdefs.ErrInvalid)
			}
			q.PageSize = uint32(n)
		case "page_token":
			q.PageToken = val
		default:
			return nil, fmt.Errorf("unknown query parameter %q (known: node, namespace, pod, state, health, include_sandboxes, page_size, page_token, include_probe_output): %w", k, errdefs.ErrInvalid)
		}
	}
	return q, nil
}

// parseEnum accepts an enum value by its short name ("running") or full name
// ("CONTAINER_STATE_RUNNING"), in any case; "" is UNSPECIFIED (no filter).
func parseEnum(val, prefix string, values map[string]int32) (int32, error) {
	if val == "" {
		return 0, nil
	}
	up := strings.ToUpper(val)
	if !strings.HasPrefix(up, prefix) {
		up = prefix + up
	}
	if n, ok := values[up]; ok && n != 0 {
		return n, nil
	}
	var names []string
	for name, n := range values {
		if n != 0 {
			names = append(names, strings.ToLower(strings.TrimPrefix(name, prefix)))
		}
	}
	slices.Sort(names)
	return 0, fmt.Errorf("%q is not one of %s: %w", val, strings.Join(names, ", "), errdefs.ErrInvalid)
}

// serveMetrics writes the fleet series of one shard. Nodes that changed
// since the last scrape are rendered here, outside every lock ingest takes
// for more than a pointer copy; the others are written from their bytes.
func (a *Aggregator) serveMetrics(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	q := r.URL.Query()
	shard, err := metrics.ParseShard(q.Get("shard"), q.Get("shards"))
	if err == nil {
		for k := range q {
			if k != "shard" && k != "shards" {
				err = fmt.Errorf("unknown query parameter %q (known: shard, shards): %w", k, errdefs.ErrInvalid)
			}
		}
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}

	nodes := a.fleet.list()
	rendered := make([]*metrics.Rendered, 0, len(nodes))
	series, size := 0, 0
	for _, n := range nodes {
		if !shard.Holds(n.name) {
			continue
		}
		rd := n.rendered()
		rendered = append(rendered, rd)
		series += rd.Series()
		size += rd.Size()
	}

	w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	var out io.Writer = w
	if a.cfg.MetricsGzip && acceptsGzip(r) {
		w.Header().Set("Content-Encoding", "gzip")
		gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		defer gz.Close()
		out = gz
	}
	bw := bufio.NewWriterSize(out, 256<<10)
	if _, err := metrics.WriteFamilies(bw, rendered); err != nil {
		a.log.Debug("metrics scrape aborted", "shard", shard.String(), "err", err)
		return
	}
	if shard.First() {
		if err := a.writeSelfMetrics(bw); err != nil {
			a.log.Warn("self-metrics", "err", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return
	}
	a.metrics.expositions.record(shard.String(), time.Since(start), series, size)
}

func (a *Aggregator) writeSelfMetrics(w io.Writer) error {
	mfs, err := a.cfg.Registry.Gather()
	var errs []error
	if err != nil {
		errs = append(errs, err) // partial results are still written
	}
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(w, mf); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		if strings.TrimSpace(strings.SplitN(part, ";", 2)[0]) == "gzip" {
			return true
		}
	}
	return false
}
