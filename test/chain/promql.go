package chain

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Sample is one element of an instant vector.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// String renders the sample like the Prometheus UI: {a="b"} 3.
func (s Sample) String() string {
	keys := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, s.Labels[k])
	}
	return "{" + strings.Join(parts, ", ") + "} " + strconv.FormatFloat(s.Value, 'g', -1, 64)
}

// Query evaluates an instant PromQL query through the Prometheus HTTP API
// (/api/v1/query) of the chain's Prometheus, as a user's dashboard would.
func (c *Chain) Query(ctx context.Context, promql string) ([]Sample, error) {
	return QueryPrometheus(ctx, c.cfg.Prometheus, promql)
}

// QueryPrometheus evaluates an instant vector query against the Prometheus
// at addr (host:port). Scalars and matrices are refused.
func QueryPrometheus(ctx context.Context, addr, promql string) ([]Sample, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u := "http://" + addr + "/api/v1/query?" + url.Values{"query": {promql}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", promql, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	return parseQueryResponse(promql, body)
}

func parseQueryResponse(promql string, body []byte) ([]Sample, error) {
	var r struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	var vector []struct {
		Metric map[string]string `json:"metric"`
		Value  []any             `json:"value"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("query %q: decode response: %w", promql, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %q: %s: %s", promql, r.ErrorType, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: result type %q, want vector", promql, r.Data.ResultType)
	}
	if err := json.Unmarshal(r.Data.Result, &vector); err != nil {
		return nil, fmt.Errorf("query %q: decode vector: %w", promql, err)
	}
	out := make([]Sample, 0, len(vector))
	for _, s := range vector {
		if len(s.Value) != 2 {
			return nil, fmt.Errorf("query %q: sample value %v: want [time, value]", promql, s.Value)
		}
		str, ok := s.Value[1].(string)
		if !ok {
			return nil, fmt.Errorf("query %q: sample value %v: want a string", promql, s.Value[1])
		}
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("query %q: sample value: %w", promql, err)
		}
		out = append(out, Sample{Labels: s.Metric, Value: v})
	}
	return out, nil
}
