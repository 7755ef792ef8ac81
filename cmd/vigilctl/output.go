package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// printer renders API answers as kubectl-like tables, wide tables or JSON.
type printer struct {
	w      io.Writer
	errw   io.Writer
	format string
	now    time.Time
	// loc is the time zone of event times; nil means time.Local.
	loc *time.Location
	// eventsHeader is set once the events header was written; watchSaid
	// once the watch was said to be in place.
	eventsHeader, watchSaid bool
}

const none = "-"

func (p *printer) json(m proto.Message, multiline bool) error {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	// protojson varies its whitespace on purpose; normalise it so the
	// output is stable.
	var buf bytes.Buffer
	if multiline {
		err = json.Indent(&buf, raw, "", "  ")
	} else {
		err = json.Compact(&buf, raw)
	}
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err = p.w.Write(buf.Bytes())
	return err
}

// noneFound is what a table of no rows prints, as kubectl does: a line on
// stderr, nothing on stdout. (JSON prints the empty answer, {}.)
func (p *printer) noneFound(what string) {
	fmt.Fprintf(p.errw, "No %s found.\n", what)
}

func (p *printer) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(p.w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func (p *printer) nodes(resp *vigilv1.ListNodesResponse) error {
	if p.format == "json" {
		return p.json(resp, true)
	}
	if len(resp.GetNodes()) == 0 {
		p.noneFound("nodes")
		return nil
	}
	header := []string{"NAME", "STATUS", "CONTAINERS", "RUNTIME", "AGENT", "LAST SEEN", "CONNECTED"}
	wide := p.format == "wide"
	if wide {
		header = append(header, "BOOT ID", "BUFFERED", "DROPPED", "RECONNECTS", "CPU", "RSS", "PEERS", "CAPABILITIES")
	}
	var rows [][]string
	for _, n := range resp.GetNodes() {
		runtime := "unavailable"
		if n.GetRuntimeAvailable() {
			runtime = strings.TrimSpace("containerd " + clean(n.GetRuntimeVersion()))
		}
		connected := none // how long the current stream has lived
		if n.GetState() == vigilv1.NodeState_NODE_STATE_UP || n.GetState() == vigilv1.NodeState_NODE_STATE_STALE {
			connected = p.age(n.GetConnectedSince())
		}
		row := []string{
			cell(n.GetName()), nodeState(n.GetState()), strconv.Itoa(int(n.GetContainerCount())), runtime,
			cell(n.GetAgentVersion()), p.ago(n.GetLastSeen()), connected,
		}
		if wide {
			buffered, dropped, reconnects, cpu := none, none, none, none
			if a := n.GetAgentStatus(); a != nil {
				if a.GetBufferCapacity() > 0 {
					buffered = fmt.Sprintf("%d/%d", a.GetBufferedMessages(), a.GetBufferCapacity())
				}
				dropped = strconv.FormatUint(a.GetBufferDroppedTotal(), 10)
				reconnects = strconv.FormatUint(a.GetReconnectsTotal(), 10)
				cpu = fmt.Sprintf("%.1fs", a.GetCpuSeconds())
			}
			row = append(row, cell(n.GetBootId()), buffered, dropped, reconnects, cpu,
				bytesIEC(n.GetAgentStatus().GetRssBytes()), peers(n.GetPeerView()),
				cell(strings.Join(n.GetCapabilities(), ",")))
		}
		rows = append(rows, row)
	}
	return p.table(header, rows)
}

func (p *printer) containers(resp *vigilv1.ListContainersResponse) error {
	if p.format == "json" {
		return p.json(resp, true)
	}
	if len(resp.GetContainers()) == 0 {
		p.noneFound("containers")
		return nil
	}
	header := []string{"NODE", "NAMESPACE", "POD", "CONTAINER", "IMAGE", "STATE", "HEALTH", "RESTARTS", "LAST EXIT", "BACKOFF", "AGE"}
	wide := p.format == "wide"
	if wide {
		header = append(header, "ID", "MANAGER", "POLICY", "PID")
	}
	var rows [][]string
	for _, nc := range resp.GetContainers() {
		c := nc.GetContainer()
		lastExit := none
		if e := c.GetLastExit(); e != nil {
			lastExit = exitText(e)
			if e.GetExitedAt() != nil {
				lastExit += " " + p.ago(e.GetExitedAt())
			}
		}
		row := []string{
			cell(nc.GetNode()), cell(c.GetNamespace()), podName(c.GetPod()), containerName(c, !wide),
			cell(c.GetImage()), containerState(c), health(c.GetHealth()), strconv.Itoa(int(c.GetRestartCount())),
			lastExit, p.backoff(c.GetBackoff()), p.age(c.GetCreatedAt()),
		}
		if wide {
			pid := none
			if c.GetPid() != 0 {
				pid = strconv.Itoa(int(c.GetPid()))
			}
			row = append(row, cell(c.GetId()), manager(c.GetManager()), policy(c), pid)
		}
		rows = append(rows, row)
	}
	if err := p.table(header, rows); err != nil {
		return err
	}
	p.labelErrors(resp.GetContainers())
	return nil
}

// labelErrors says on stderr, after a table, which containers run without
// some of what their labels ask for (a health check, a policy, a stop
// signal) because the agent could not use them, and why: otherwise only
// the agent's log on the node says so.
func (p *printer) labelErrors(cs []*vigilv1.NodeContainer) {
	for _, nc := range cs {
		c := nc.GetContainer()
		for _, e := range c.GetLabelErrors() {
			fmt.Fprintf(p.errw, "vigilctl: warning: %s/%s/%s: %s\n", clean(nc.GetNode()), clean(c.GetNamespace()), clean(c.GetId()), clean(e))
		}
	}
}

// watching says once on stderr, for tables, that the events watch is in
// place: until an event comes, it is all an operator sees (the stream
// does not say when the history's replay ends, so an empty one cannot be
// told apart from a quiet fleet).
func (p *printer) watching(since time.Duration) {
	if p.watchSaid || p.format == "json" {
		return
	}
	p.watchSaid = true
	if since > 0 {
		fmt.Fprintf(p.errw, "Watching for events, from %s ago (Ctrl-C to stop).\n", since)
		return
	}
	fmt.Fprintln(p.errw, "Watching for events (Ctrl-C to stop).")
}

// eventFormat lays out event lines in fixed columns: a stream cannot be
// aligned after the fact.
const eventFormat = "%-8s  %-16s  %-10s  %-40s  %-18s  %s\n"

func (p *printer) event(ev *vigilv1.WatchEventsResponse) error {
	if p.format == "json" {
		return p.json(ev, false)
	}
	if !p.eventsHeader {
		p.eventsHeader = true
		if _, err := fmt.Fprintf(p.w, eventFormat, "TIME", "NODE", "NAMESPACE", "CONTAINER", "EVENT", "DETAIL"); err != nil {
			return err
		}
	}
	loc := p.loc
	if loc == nil {
		loc = time.Local
	}
	at := func(ts *timestamppb.Timestamp) string {
		if ts == nil {
			return none
		}
		return ts.AsTime().In(loc).Format("15:04:05")
	}
	if n := ev.GetNodeEvent(); n != nil {
		kind := "node " + n.GetCondition()
		_, err := fmt.Fprintf(p.w, eventFormat, at(n.GetTime()), cell(ev.GetNode()), none, none, kind, cell(n.GetReason()))
		return err
	}
	if r := ev.GetRemediation(); r != nil {
		t := r.GetTarget()
		name := t.GetContainerId()
		if t.GetPod() != "" {
			name = t.GetPodNamespace() + "/" + t.GetPod() + "/" + t.GetContainer()
		}
		if t.GetInterface() != "" {
			name += "%" + t.GetInterface()
		}
		kind := enumWord(r.GetAction().String(), "REMEDIATION_ACTION_") + " " + enumWord(r.GetState().String(), "REMEDIATION_STATE_")
		detail := r.GetResult()
		if by := r.GetRequestedBy(); by != "" {
			detail += " by " + by
		} else if r.GetRule() != "" {
			detail += " rule " + r.GetRule()
		}
		detail = strings.TrimSpace(detail + " " + clean(r.GetMessage()))
		_, err := fmt.Fprintf(p.w, eventFormat, at(r.GetUpdatedAt()), cell(ev.GetNode()), cell(t.GetNamespace()), cell(name), "remediation "+kind, cell(detail))
		return err
	}
	e := ev.GetEvent()
	c := e.GetContainer()
	when := at(e.GetTime())
	name := containerName(c, false)
	if pod := c.GetPod(); pod.GetName() != "" {
		name = podName(pod) + "/" + name
	}
	kind, detail := eventText(e)
	if m := clean(e.GetMessage()); m != "" && !strings.Contains(detail, m) {
		detail = strings.TrimSpace(detail + " " + m) // not twice: a decision's message is its reason
	}
	_, err := fmt.Fprintf(p.w, eventFormat, when, cell(ev.GetNode()), cell(c.GetNamespace()), name, kind, cell(detail))
	return err
}

func eventText(e *vigilv1.ContainerEvent) (kind, detail string) {
	c := e.GetContainer()
	switch e.GetType() {
	case vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_ADDED:
		return "added", c.GetImage()
	case vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_REMOVED:
		return "removed", ""
	case vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED:
		return "state " + containerState(c), ""
	case vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_HEALTH_CHANGED:
		return "health " + health(c.GetHealth()), ""
	case vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED:
		if e.GetExit() != nil {
			return "exited", exitText(e.GetExit())
		}
		return "exited", ""
	case vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTARTED:
		return "restarted", fmt.Sprintf("restarts=%d", c.GetRestartCount())
	case vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_OOM:
		return "oom", ""
	case vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_RESTART_DECISION:
		d := e.GetDecision()
		kind := "decision " + enumWord(d.GetKind().String(), "RESTART_DECISION_KIND_")
		detail := clean(d.GetReason())
		if d.GetDelay() != nil {
			detail = strings.TrimSpace("in " + shortDuration(d.GetDelay().AsDuration()) + " " + detail)
		}
		return kind, detail
	case vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_CONDITIONS_CHANGED:
		var types []string
		for _, cond := range c.GetConditions() {
			types = append(types, enumWord(cond.GetType().String(), "CONDITION_TYPE_"))
		}
		if len(types) == 0 {
			return "conditions", "cleared"
		}
		return "conditions", strings.Join(types, ",")
	}
	return enumWord(e.GetType().String(), "CONTAINER_EVENT_TYPE_"), ""
}

// enumWord turns FOO_BAR_BAZ with prefix FOO_ into "bar-baz".
func enumWord(name, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, prefix)), "_", "-")
}

func nodeState(s vigilv1.NodeState) string {
	switch s {
	case vigilv1.NodeState_NODE_STATE_UP:
		return "Up"
	case vigilv1.NodeState_NODE_STATE_STALE:
		return "Stale"
	case vigilv1.NodeState_NODE_STATE_DOWN:
		return "Down"
	}
	return "Unknown"
}

func containerState(c *vigilv1.Container) string {
	switch c.GetState() {
	case vigilv1.ContainerState_CONTAINER_STATE_CREATED:
		return "Created"
	case vigilv1.ContainerState_CONTAINER_STATE_RUNNING:
		return "Running"
	case vigilv1.ContainerState_CONTAINER_STATE_PAUSED:
		return "Paused"
	case vigilv1.ContainerState_CONTAINER_STATE_STOPPED:
		if c.GetExplicitlyStopped() {
			return "Stopped(by operator)"
		}
		return "Stopped"
	}
	return "Unknown"
}

// health is a container's health check status, with what its failure is
// blamed on when not on the container ("unhealthy(node network)": the
// agent's gossip peers reach the pod that its node cannot; neither the
// agent nor an alert's remediation restarts it for that).
func health(h *vigilv1.Health) string {
	switch h.GetStatus() {
	case vigilv1.HealthStatus_HEALTH_STATUS_STARTING:
		return "starting"
	case vigilv1.HealthStatus_HEALTH_STATUS_HEALTHY:
		return "healthy"
	case vigilv1.HealthStatus_HEALTH_STATUS_UNHEALTHY:
		if h.GetBlame() == vigilv1.HealthBlame_HEALTH_BLAME_NODE_NETWORK {
			return "unhealthy(node network)"
		}
		return "unhealthy"
	}
	return none
}

func manager(m vigilv1.Manager) string {
	if m == vigilv1.Manager_MANAGER_UNSPECIFIED {
		return none
	}
	return enumWord(m.String(), "MANAGER_")
}

// policy is the restart policy in its label syntax, for containers Vigil
// restarts.
func policy(c *vigilv1.Container) string {
	p := c.GetRestartPolicy()
	if c.GetManager() != vigilv1.Manager_MANAGER_VIGIL || p == nil {
		return none
	}
	s := enumWord(p.GetKind().String(), "RESTART_POLICY_KIND_")
	switch p.GetKind() {
	case vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_UNSPECIFIED:
		s = "no"
	case vigilv1.RestartPolicyKind_RESTART_POLICY_KIND_ON_FAILURE:
		if p.GetMaxRetries() > 0 {
			s += fmt.Sprintf(":%d", p.GetMaxRetries())
		}
	}
	if p.GetRestartOnUnhealthy() {
		s += "+unhealthy"
	}
	return s
}

// exitText is "completed(0)", "error(3)", "signal(KILL)" or "oom-killed".
func exitText(e *vigilv1.ExitStatus) string {
	switch e.GetReason() {
	case vigilv1.ExitReason_EXIT_REASON_COMPLETED:
		return fmt.Sprintf("completed(%d)", e.GetCode())
	case vigilv1.ExitReason_EXIT_REASON_ERROR:
		return fmt.Sprintf("error(%d)", e.GetCode())
	case vigilv1.ExitReason_EXIT_REASON_SIGNAL:
		if s := clean(e.GetSignal()); s != "" {
			return "signal(" + s + ")"
		}
		return fmt.Sprintf("signal(%d)", e.GetCode())
	case vigilv1.ExitReason_EXIT_REASON_OOM_KILLED:
		return "oom-killed"
	}
	return fmt.Sprintf("exit(%d)", e.GetCode())
}

// backoff is what the BACKOFF column says: "restart in 10s" while a restart
// is pending, "crash-looping, restart in 10s" when the container keeps
// failing, "crash-looping (backoff 40s)" for one running again (its next
// failure waits that long), "gave up", or "-".
func (p *printer) backoff(b *vigilv1.BackoffState) string {
	if b.GetGaveUp() {
		return "gave up"
	}
	var left time.Duration
	if b.GetNextRestartAt() != nil {
		left = b.GetNextRestartAt().AsTime().Sub(p.now)
	}
	switch {
	case left > 0 && b.GetCrashLooping():
		return "crash-looping, restart in " + shortDuration(left)
	case left > 0:
		return "restart in " + shortDuration(left)
	case b.GetCrashLooping() && b.GetCurrentDelay().AsDuration() > 0:
		return "crash-looping (backoff " + shortDuration(b.GetCurrentDelay().AsDuration()) + ")"
	case b.GetCrashLooping():
		return "crash-looping"
	}
	return none
}

func podName(p *vigilv1.PodIdentity) string {
	if p.GetName() == "" {
		return none
	}
	if p.GetNamespace() == "" {
		return clean(p.GetName())
	}
	return clean(p.GetNamespace() + "/" + p.GetName())
}

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// containerName is the kubelet's container name, "(sandbox)" for a pod's
// sandbox, else the containerd id (shortened to 12 characters when it is a
// 64-digit hex id and short is set).
func containerName(c *vigilv1.Container, short bool) string {
	if p := c.GetPod(); p != nil {
		if p.GetSandbox() {
			return "(sandbox)"
		}
		if p.GetContainerName() != "" {
			return clean(p.GetContainerName())
		}
	}
	id := c.GetId()
	if short && hexID.MatchString(id) {
		id = id[:12]
	}
	return cell(id)
}

func peers(v *vigilv1.PeerView) string {
	if v == nil {
		return none
	}
	alive := 0
	for _, p := range v.GetPeers() {
		if p.GetState() == vigilv1.PeerState_PEER_STATE_ALIVE {
			alive++
		}
	}
	return fmt.Sprintf("%d/%d", alive, len(v.GetPeers()))
}

func bytesIEC(n uint64) string {
	switch {
	case n == 0:
		return none
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGi", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0fMi", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.0fKi", float64(n)/(1<<10))
}

// clean replaces characters that would break a table row or drive the
// terminal (tabs, newlines, escapes, any other C0 or C1 control character)
// in text the agents sent with spaces.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) { // C0, DEL and C1 (U+0080-U+009F)
			return ' '
		}
		return r
	}, s)
}

// cell is clean(s), or "-" when empty.
func cell(s string) string {
	if s = clean(s); s == "" {
		return none
	}
	return s
}

// ago is "5m ago", or "-" for an unset time.
func (p *printer) ago(t *timestamppb.Timestamp) string {
	if t == nil {
		return none
	}
	return shortDuration(p.now.Sub(t.AsTime())) + " ago"
}

// age is the time since t, kubectl's AGE column; "-" for an unset time.
func (p *printer) age(t *timestamppb.Timestamp) string {
	if t == nil {
		return none
	}
	return shortDuration(p.now.Sub(t.AsTime()))
}

// shortDuration renders d the way kubectl's AGE column does: precise when
// short, coarse when long ("40s", "3m20s", "45m", "5h10m", "30h", "6d4h",
// "40d", "3y").
func shortDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d.Round(time.Second) / time.Second)
	m, h, days := s/60, s/3600, s/86400
	switch {
	case s < 120:
		return fmt.Sprintf("%ds", s)
	case m < 10:
		if s%60 == 0 {
			return fmt.Sprintf("%dm", m)
		}
		return fmt.Sprintf("%dm%ds", m, s%60)
	case h < 3:
		return fmt.Sprintf("%dm", m)
	case h < 8:
		if m%60 == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m%60)
	case h < 48:
		return fmt.Sprintf("%dh", h)
	case days < 8:
		if h%24 == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%dh", days, h%24)
	case days < 2*365:
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dy", days/365)
}
