package remediation

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// webhookCodes are the status codes AlertsHandler answers (the code label
// of vigil_remediation_webhook_requests_total, each at 0 from the start).
var webhookCodes = []int{http.StatusOK, http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable}

// AlertsHandler is POST /api/v1/alerts, Alertmanager's webhook receiver
// (payload version 4). The aggregator mounts it behind its authentication.
//
//	200  every alert journaled and decided; the body is a Summary.
//	400  a malformed body or an unknown version, with a message saying
//	     what was wrong; Alertmanager does not retry it, which is right:
//	     the same body would fail the same way. Nothing is journaled.
//	405  not a POST. 413 a body over 1 MiB.
//	503  the journal could not be written (the store is unavailable, or
//	     kept conflicting): Alertmanager retries, and the retry is safe.
//
// It answers once the decisions are committed (milliseconds: one store
// transaction for the whole webhook); the commands are delivered
// asynchronously (Deliver).
func (e *Engine) AlertsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, body := e.serveAlerts(r)
		e.m.webhook.WithLabelValues(strconv.Itoa(code)).Inc()
		writeJSON(w, code, body)
	})
}

type errorBody struct {
	Error string `json:"error"`
}

func (e *Engine) serveAlerts(r *http.Request) (int, any) {
	received := e.now()
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, errorBody{"POST an Alertmanager webhook (version 4) here"}
	}
	wh, err := ReadWebhook(r.Body)
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, ErrTooLarge) {
			code = http.StatusRequestEntityTooLarge
		}
		e.log.Warn("webhook refused", "code", code, "remote", r.RemoteAddr, "err", err)
		return code, errorBody{err.Error()}
	}
	sum, err := e.Receive(r.Context(), wh, received)
	if err != nil {
		e.m.suppressed.WithLabelValues(string(ReasonStoreUnavailable)).Add(float64(len(wh.Alerts)))
		e.log.Error("webhook not journaled; answering 503 for Alertmanager to retry", "group", wh.GroupKey, "alerts", len(wh.Alerts), "err", err)
		return http.StatusServiceUnavailable, errorBody{fmt.Sprintf("the remediation journal cannot be written now (%v); retry", err)}
	}
	return http.StatusOK, sum
}

// RemediationsHandler is GET /api/v1/remediations: the remediations as
// JSON ({"remediations": [...]}, [] when there are none), newest first. Query parameters: node (only
// that node's), limit (default 100, at most 10000). 400 names a bad
// parameter; 503 when the store cannot be read.
func (e *Engine) RemediationsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			writeJSON(w, http.StatusMethodNotAllowed, errorBody{"GET only"})
			return
		}
		q := r.URL.Query()
		var f ListFilter
		for k, v := range q {
			switch k {
			case "node":
				f.Node = v[0]
			case "limit":
				n, err := strconv.Atoi(v[0])
				if err != nil || n < 1 || n > MaxListLimit {
					writeJSON(w, http.StatusBadRequest, errorBody{fmt.Sprintf("limit %q must be a number from 1 to %d", clip(v[0]), MaxListLimit)})
					return
				}
				f.Limit = n
			default:
				writeJSON(w, http.StatusBadRequest, errorBody{fmt.Sprintf("unknown query parameter %q (known: node, limit)", clip(k))})
				return
			}
		}
		list, err := e.List(r.Context(), f)
		if err != nil {
			code := http.StatusServiceUnavailable
			if errors.Is(err, errdefs.ErrInvalid) {
				code = http.StatusBadRequest
			}
			writeJSON(w, code, errorBody{err.Error()})
			return
		}
		if list == nil {
			list = []Remediation{} // "remediations": [], never null
		}
		writeJSON(w, http.StatusOK, struct {
			Remediations []Remediation `json:"remediations"`
		}{list})
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
