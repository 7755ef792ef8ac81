package remediation

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// MaxWebhookBytes is the largest webhook body accepted (1 MiB). Alertmanager
// caps a notification at max_alerts alerts when set; a group of several
// hundred alerts with annotations stays well below this.
const MaxWebhookBytes = 1 << 20

// ErrTooLarge: a webhook body over MaxWebhookBytes (it wraps ErrInvalid).
var ErrTooLarge = fmt.Errorf("webhook body larger than the limit of %d bytes (1 MiB): %w", MaxWebhookBytes, errdefs.ErrInvalid)

// WebhookVersion is the only Alertmanager webhook payload version parsed.
const WebhookVersion = "4"

// AlertStatus is an alert's state as Alertmanager reports it.
type AlertStatus string

const (
	// StatusFiring: the alert is active.
	StatusFiring AlertStatus = "firing"
	// StatusResolved: the alert has ended (endsAt is in the past).
	StatusResolved AlertStatus = "resolved"
)

// Webhook is one Alertmanager webhook notification (payload version 4):
// a group of alerts sharing a route's group labels.
type Webhook struct {
	Version           string
	GroupKey          string
	TruncatedAlerts   int
	Status            AlertStatus
	Receiver          string
	GroupLabels       map[string]string
	CommonLabels      map[string]string
	CommonAnnotations map[string]string
	ExternalURL       string
	Alerts            []Alert
}

// Alert is one alert of a notification. Fingerprint and StartsAt identify
// one firing of one alert: Alertmanager keeps both across its retries and
// across HA replicas, and a new firing after a resolve has a new StartsAt.
type Alert struct {
	Status       AlertStatus
	Labels       map[string]string
	Annotations  map[string]string
	StartsAt     time.Time
	EndsAt       time.Time // zero while firing without a known end
	GeneratorURL string
	Fingerprint  string
}

// Name is the alert's alertname label.
func (a *Alert) Name() string { return a.Labels["alertname"] }

// The wire form. Pointers tell a missing required field from an empty one.
// Fields Alertmanager adds in later releases are ignored (it has added
// fingerprint and truncatedAlerts within version 4); a version other than 4
// is refused, as its meaning is unknown.
type wireWebhook struct {
	Version           *string           `json:"version"`
	GroupKey          *string           `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
	Status            string            `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            *[]wireAlert      `json:"alerts"`
}

type wireAlert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     *string           `json:"startsAt"`
	EndsAt       string            `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// ReadWebhook reads at most MaxWebhookBytes from r and parses them.
// A longer body is refused (ErrInvalid naming the limit), never truncated.
func ReadWebhook(r io.Reader) (*Webhook, error) {
	body, err := io.ReadAll(io.LimitReader(r, MaxWebhookBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading webhook body: %w", err)
	}
	if len(body) > MaxWebhookBytes {
		return nil, ErrTooLarge
	}
	return ParseWebhook(body)
}

// ParseWebhook parses an Alertmanager webhook payload. Errors wrap
// errdefs.ErrInvalid and name the field and value that were wrong. Fields
// Alertmanager may add in later releases are ignored; a version other than
// "4" is refused, as its meaning is unknown.
func ParseWebhook(body []byte) (*Webhook, error) {
	if len(body) > MaxWebhookBytes {
		return nil, fmt.Errorf("%d bytes: %w", len(body), ErrTooLarge)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var w wireWebhook
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("webhook body is not a version 4 payload: %s: %w", jsonError(body, err, "an object (Alertmanager webhook v4)"), errdefs.ErrInvalid)
	}
	if dec.More() {
		return nil, fmt.Errorf("webhook body has data after the JSON object: %w", errdefs.ErrInvalid)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("webhook body has data after the JSON object: %w", errdefs.ErrInvalid)
	}
	if w.Version == nil {
		return nil, fmt.Errorf("webhook payload has no \"version\" (Alertmanager sends \"4\"): %w", errdefs.ErrInvalid)
	}
	if *w.Version != WebhookVersion {
		return nil, fmt.Errorf("webhook payload version %q is not supported (only %q): %w", clip(*w.Version), WebhookVersion, errdefs.ErrInvalid)
	}
	if w.GroupKey == nil {
		return nil, fmt.Errorf("webhook payload has no \"groupKey\": %w", errdefs.ErrInvalid)
	}
	st, err := parseStatus(w.Status)
	if err != nil {
		return nil, fmt.Errorf("webhook payload \"status\": %w", err)
	}
	if w.Alerts == nil {
		return nil, fmt.Errorf("webhook payload has no \"alerts\": %w", errdefs.ErrInvalid)
	}
	if w.TruncatedAlerts < 0 {
		return nil, fmt.Errorf("webhook payload \"truncatedAlerts\" is %d, negative: %w", w.TruncatedAlerts, errdefs.ErrInvalid)
	}
	out := &Webhook{
		Version:           *w.Version,
		GroupKey:          *w.GroupKey,
		TruncatedAlerts:   w.TruncatedAlerts,
		Status:            st,
		Receiver:          w.Receiver,
		GroupLabels:       w.GroupLabels,
		CommonLabels:      w.CommonLabels,
		CommonAnnotations: w.CommonAnnotations,
		ExternalURL:       w.ExternalURL,
		Alerts:            make([]Alert, 0, len(*w.Alerts)),
	}
	for i, wa := range *w.Alerts {
		a, err := parseAlert(wa)
		if err != nil {
			return nil, fmt.Errorf("webhook alerts[%d]: %w", i, err)
		}
		out.Alerts = append(out.Alerts, a)
	}
	return out, nil
}

// Bounds of an alert's identifying fields.
const (
	maxFingerprint = 64
	maxLabelBytes  = 1024
)

func parseAlert(wa wireAlert) (Alert, error) {
	st, err := parseStatus(wa.Status)
	if err != nil {
		return Alert{}, fmt.Errorf("\"status\": %w", err)
	}
	if wa.Fingerprint == "" {
		return Alert{}, fmt.Errorf("no \"fingerprint\" (Alertmanager 0.19 and later send one; it identifies the alert): %w", errdefs.ErrInvalid)
	}
	if len(wa.Fingerprint) > maxFingerprint {
		return Alert{}, fmt.Errorf("alert \"fingerprint\" is %d bytes, more than %d (Alertmanager sends 16 hex digits): %w", len(wa.Fingerprint), maxFingerprint, errdefs.ErrInvalid)
	}
	if len(wa.Labels) == 0 {
		return Alert{}, fmt.Errorf("alert %s has no \"labels\": %w", clip(wa.Fingerprint), errdefs.ErrInvalid)
	}
	// Labels are copied into the intent, the record, the journal and the
	// command: bound them, or one alert makes a store transaction too big
	// to ever commit (etcd's request limit), and every retry fails alike.
	for k, v := range wa.Labels {
		if len(k) > maxLabelBytes || len(v) > maxLabelBytes {
			return Alert{}, fmt.Errorf("alert %s label %q is longer than %d bytes: %w", clip(wa.Fingerprint), clip(k), maxLabelBytes, errdefs.ErrInvalid)
		}
	}
	if wa.StartsAt == nil {
		return Alert{}, fmt.Errorf("alert %s has no \"startsAt\": %w", clip(wa.Fingerprint), errdefs.ErrInvalid)
	}
	starts, err := time.Parse(time.RFC3339Nano, *wa.StartsAt)
	if err != nil || starts.IsZero() {
		return Alert{}, fmt.Errorf("alert %s \"startsAt\" %q is not an RFC 3339 time after year 1: %w", clip(wa.Fingerprint), clip(*wa.StartsAt), errdefs.ErrInvalid)
	}
	var ends time.Time
	if wa.EndsAt != "" {
		ends, err = time.Parse(time.RFC3339Nano, wa.EndsAt)
		if err != nil {
			return Alert{}, fmt.Errorf("alert %s \"endsAt\" %q is not an RFC 3339 time: %w", clip(wa.Fingerprint), clip(wa.EndsAt), errdefs.ErrInvalid)
		}
	}
	if st == StatusResolved && ends.IsZero() {
		return Alert{}, fmt.Errorf("alert %s is resolved but has no \"endsAt\": %w", clip(wa.Fingerprint), errdefs.ErrInvalid)
	}
	return Alert{
		Status:       st,
		Labels:       wa.Labels,
		Annotations:  wa.Annotations,
		StartsAt:     starts.UTC(),
		EndsAt:       ends.UTC(),
		GeneratorURL: wa.GeneratorURL,
		Fingerprint:  wa.Fingerprint,
	}, nil
}

func parseStatus(s string) (AlertStatus, error) {
	switch AlertStatus(s) {
	case StatusFiring, StatusResolved:
		return AlertStatus(s), nil
	case "":
		return "", fmt.Errorf("missing (want \"firing\" or \"resolved\"): %w", errdefs.ErrInvalid)
	}
	return "", fmt.Errorf("%q is neither \"firing\" nor \"resolved\": %w", clip(s), errdefs.ErrInvalid)
}

// clip bounds a value quoted in an error message, so that a hostile body
// does not turn into a huge log line.
func clip(s string) string { return clipN(s, 64) }

// clipN cuts s to max bytes without splitting a rune (protobuf strings
// must be valid UTF-8), marking the cut.
func clipN(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return strings.ToValidUTF8(s[:max], "") + "..."
}
