package remediation

import (
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// MaxRulesBytes bounds a rules file (1 MiB): rules are written by people.
const MaxRulesBytes = 1 << 20

// Defaults, filled in one place (Rules.setDefaults). Why these values:
// deploy/remediation/rules.yaml says it line by line.
const (
	DefaultMaxActionsPerMinute = 10
	DefaultMaxNodesPercent     = 10.0 // of the fleet's nodes, at least 1
	DefaultStormShare          = 0.2
	DefaultStormMinTargets     = 10
	DefaultStormWindow         = 5 * time.Minute
	DefaultCommandDeadline     = 2 * time.Minute
	DefaultResultGrace         = time.Minute
	DefaultRetention           = 7 * 24 * time.Hour
	DefaultCooldown            = 10 * time.Minute
	DefaultMaxPerHour          = 3
)

// Rules is a parsed, validated rules file: fleet-wide settings and the
// rules, tried in order (the first rule whose matchers all hold decides).
// A Rules value is immutable once parsed and safe to share.
type Rules struct {
	// DryRun: decide and journal everything, send nothing (default false).
	DryRun bool
	// MaxActionsPerMinute across the fleet (sliding minute; default 10;
	// 0 in the file turns the limit off).
	MaxActionsPerMinute int
	// MaxNodesInFlight: at most this many nodes with a command not yet
	// answered. MaxNodesPercent, when set, is a share of the fleet's nodes
	// instead (rounded up, at least 1). Default 10%. 0 turns it off.
	MaxNodesInFlight int
	MaxNodesPercent  float64
	// Storm guard: when more than StormShare of the fleet's targets (and at
	// least StormMinTargets) have a firing alert that a rule matches, seen
	// within StormWindow, every alert-driven action is held (suppressed as
	// storm) and vigil_remediation_storm_active is 1. StormShare 0 turns it
	// off. Defaults 0.2, 10, 5m.
	StormShare      float64
	StormMinTargets int
	StormWindow     time.Duration
	// CommandDeadline: an agent must not start a command after this long
	// (default 2m). ResultGrace: a command sent but not answered by
	// deadline + grace is marked unknown (default 1m).
	CommandDeadline time.Duration
	ResultGrace     time.Duration
	// Retention of the journal and of finished remediations (default 7d).
	Retention time.Duration
	// Cooldown and MaxPerHour for operators' requests and the default of
	// every rule (10m, 3).
	Cooldown   time.Duration
	MaxPerHour int
	// Rules in file order.
	Rules []*Rule
	// Source names where the rules came from (a path, or "defaults").
	Source string
}

// TargetLabels names the alert labels a rule resolves its target from.
type TargetLabels struct {
	Node, Namespace, Container, PodNamespace, Pod, Interface string
}

// Escalation replaces a rule's action once a target has had After actions
// within the hour: for example restart, then stop and leave it to a human.
type Escalation struct {
	After  int
	Action Action
	Signal uint32
}

// Rule maps matching alerts to an action on the target their labels name.
type Rule struct {
	Name string
	// Line in the rules file, for messages.
	Line int
	// Match: labels that must equal these values ("" matches a missing
	// label). MatchRE: labels that must match these regular expressions,
	// anchored at both ends as in Prometheus.
	Match   map[string]string
	MatchRE map[string]*regexp.Regexp
	Action  Action
	// Signal for kill_container (default SIGKILL, 9).
	Signal uint32
	Target TargetLabels
	// AllowHostLink lets set_link_up act on a host link (an alert with an
	// interface and no container). Default false: only containers' links.
	AllowHostLink bool
	Cooldown      time.Duration
	MaxPerHour    int
	DryRun        bool
	Escalate      *Escalation
}

// Matches reports whether every matcher of r holds for labels.
func (r *Rule) Matches(labels map[string]string) bool {
	for k, v := range r.Match {
		if labels[k] != v {
			return false
		}
	}
	for k, re := range r.MatchRE {
		if !re.MatchString(labels[k]) {
			return false
		}
	}
	return true
}

// Ref resolves the target reference from an alert's labels. Empty label
// values are absent ones (Alertmanager drops empty labels).
func (r *Rule) Ref(labels map[string]string) TargetRef {
	get := func(name string) string {
		if name == "" {
			return ""
		}
		return labels[name]
	}
	return TargetRef{
		Node:         get(r.Target.Node),
		Namespace:    get(r.Target.Namespace),
		Container:    get(r.Target.Container),
		PodNamespace: get(r.Target.PodNamespace),
		Pod:          get(r.Target.Pod),
		Interface:    get(r.Target.Interface),
	}
}

// Match returns the first rule matching labels, or nil.
func (rs *Rules) Match(labels map[string]string) *Rule {
	for _, r := range rs.Rules {
		if r.Matches(labels) {
			return r
		}
	}
	return nil
}

// MaxNodes is the limit of nodes in flight for a fleet of n nodes; 0 means
// no limit.
func (rs *Rules) MaxNodes(n int) int {
	if rs.MaxNodesPercent > 0 {
		return max(1, int(math.Ceil(rs.MaxNodesPercent*float64(n)/100)))
	}
	return rs.MaxNodesInFlight
}

// DefaultRules are the fleet-wide defaults with no rule: only operators'
// requests act.
func DefaultRules() *Rules {
	rs := &Rules{Source: "defaults"}
	rs.setDefaults(nil)
	return rs
}

// LoadRules reads and parses a rules file.
func LoadRules(path string) (*Rules, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	defer f.Close()
	buf := make([]byte, MaxRulesBytes+1)
	n, _ := readFull(f, buf)
	if n > MaxRulesBytes {
		return nil, fmt.Errorf("rules %s: larger than %d bytes: %w", path, MaxRulesBytes, errdefs.ErrInvalid)
	}
	return ParseRules(buf[:n], path)
}

func readFull(f *os.File, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// ParseRules parses and validates a rules file's content; name is used in
// errors ("name:line:column: what"). Every error wraps errdefs.ErrInvalid.
func ParseRules(data []byte, name string) (*Rules, error) {
	if len(data) > MaxRulesBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", name, MaxRulesBytes, errdefs.ErrInvalid)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", name, strings.TrimPrefix(err.Error(), "yaml: "), errdefs.ErrInvalid)
	}
	p := &ruleParser{file: name}
	rs, err := p.parse(&doc)
	if err != nil {
		return nil, err
	}
	rs.Source = name
	return rs, nil
}

type ruleParser struct{ file string }

func (p *ruleParser) errf(n *yaml.Node, format string, args ...any) error {
	return fmt.Errorf("%s:%d:%d: %s: %w", p.file, n.Line, n.Column, fmt.Sprintf(format, args...), errdefs.ErrInvalid)
}

// fields checks that n is a mapping with only known keys, each once.
func (p *ruleParser) fields(n *yaml.Node, what string, known ...string) (map[string]*yaml.Node, error) {
	if n.Kind == yaml.AliasNode {
		return nil, p.errf(n, "%s: aliases are not supported", what)
	}
	if n.Kind != yaml.MappingNode {
		return nil, p.errf(n, "%s must be a mapping", what)
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, p.errf(k, "%s: keys must be strings", what)
		}
		if v.Kind == yaml.AliasNode {
			return nil, p.errf(v, "%s: %s: aliases are not supported", what, k.Value)
		}
		if known != nil && !slices.Contains(known, k.Value) {
			return nil, p.errf(k, "%s: unknown key %q (known: %s)", what, clip(k.Value), strings.Join(known, ", "))
		}
		if _, dup := out[k.Value]; dup {
			return nil, p.errf(k, "%s: %q given twice", what, clip(k.Value))
		}
		out[k.Value] = v
	}
	return out, nil
}

func (p *ruleParser) scalar(n *yaml.Node, what string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", p.errf(n, "%s must be a single value", what)
	}
	return n.Value, nil
}

func (p *ruleParser) str(n *yaml.Node, what string) (string, error) {
	s, err := p.scalar(n, what)
	if err == nil && n.Tag != "!!str" {
		return "", p.errf(n, "%s must be a string, got %q", what, clip(s))
	}
	return s, err
}

func (p *ruleParser) boolean(n *yaml.Node, what string) (bool, error) {
	s, err := p.scalar(n, what)
	if err != nil {
		return false, err
	}
	if n.Tag != "!!bool" {
		return false, p.errf(n, "%s must be true or false, got %q", what, clip(s))
	}
	return s == "true" || s == "True" || s == "TRUE", nil
}

func (p *ruleParser) integer(n *yaml.Node, what string, min int) (int, error) {
	s, err := p.scalar(n, what)
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(s)
	if err != nil || n.Tag != "!!int" {
		return 0, p.errf(n, "%s must be a whole number, got %q", what, clip(s))
	}
	if v < min || v > 1_000_000 {
		return 0, p.errf(n, "%s must be between %d and 1000000, got %d", what, min, v)
	}
	return v, nil
}

func (p *ruleParser) duration(n *yaml.Node, what string, min time.Duration) (time.Duration, error) {
	s, err := p.scalar(n, what)
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, p.errf(n, "%s must be a Go duration such as 10m or 90s, got %q", what, clip(s))
	}
	if d < min || d > 365*24*time.Hour {
		return 0, p.errf(n, "%s must be between %v and 8760h, got %v", what, min, d)
	}
	return d, nil
}

// share parses 0.2 or "20%" into a fraction in [0, 1].
func (p *ruleParser) share(n *yaml.Node, what string) (float64, error) {
	s, err := p.scalar(n, what)
	if err != nil {
		return 0, err
	}
	pct := strings.HasSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if err == nil && pct {
		v /= 100
	}
	if err != nil || math.IsNaN(v) || v < 0 || v > 1 {
		return 0, p.errf(n, "%s must be a share between 0 and 1 or a percentage such as 20%%, got %q", what, clip(s))
	}
	return v, nil
}

func (p *ruleParser) signal(n *yaml.Node, what string) (uint32, error) {
	s, err := p.scalar(n, what)
	if err != nil {
		return 0, err
	}
	if v, err := strconv.Atoi(s); err == nil {
		if v < 1 || v > 64 {
			return 0, p.errf(n, "%s: signal number %d is out of range 1-64", what, v)
		}
		return uint32(v), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, p.errf(n, "%s: unknown signal %q (SIGTERM, SIGKILL, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 or a number)", what, clip(s))
	}
	return uint32(sig), nil
}

func (p *ruleParser) parse(doc *yaml.Node) (*Rules, error) {
	rs := &Rules{}
	if doc.Kind == 0 {
		return nil, fmt.Errorf("%s: empty file (write at least \"rules: []\"): %w", p.file, errdefs.ErrInvalid)
	}
	root := doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	top, err := p.fields(root, "the file", "dry_run", "max_actions_per_minute", "max_nodes_in_flight", "storm_guard",
		"command_deadline", "result_grace", "retention", "defaults", "rules")
	if err != nil {
		return nil, err
	}
	var set setFlags
	if n, ok := top["dry_run"]; ok {
		if rs.DryRun, err = p.boolean(n, "dry_run"); err != nil {
			return nil, err
		}
	}
	if n, ok := top["max_actions_per_minute"]; ok {
		if rs.MaxActionsPerMinute, err = p.integer(n, "max_actions_per_minute", 0); err != nil {
			return nil, err
		}
		set.maxActions = true
	}
	if n, ok := top["max_nodes_in_flight"]; ok {
		s, err := p.scalar(n, "max_nodes_in_flight")
		if err != nil {
			return nil, err
		}
		if strings.HasSuffix(s, "%") {
			v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
			if err != nil || !(v > 0 && v <= 100) {
				return nil, p.errf(n, "max_nodes_in_flight must be a number of nodes or a percentage in (0%%, 100%%], got %q", clip(s))
			}
			rs.MaxNodesPercent = v
		} else if rs.MaxNodesInFlight, err = p.integer(n, "max_nodes_in_flight (a number of nodes or a percentage such as 10%)", 0); err != nil {
			return nil, err
		}
		set.maxNodes = true
	}
	if n, ok := top["storm_guard"]; ok {
		f, err := p.fields(n, "storm_guard", "share", "min_targets", "window")
		if err != nil {
			return nil, err
		}
		if v, ok := f["share"]; ok {
			if rs.StormShare, err = p.share(v, "storm_guard.share"); err != nil {
				return nil, err
			}
			set.stormShare = true
		}
		if v, ok := f["min_targets"]; ok {
			if rs.StormMinTargets, err = p.integer(v, "storm_guard.min_targets", 1); err != nil {
				return nil, err
			}
		}
		if v, ok := f["window"]; ok {
			if rs.StormWindow, err = p.duration(v, "storm_guard.window", time.Second); err != nil {
				return nil, err
			}
		}
	}
	for key, dst := range map[string]*time.Duration{"command_deadline": &rs.CommandDeadline, "result_grace": &rs.ResultGrace, "retention": &rs.Retention} {
		if n, ok := top[key]; ok {
			if *dst, err = p.duration(n, key, time.Second); err != nil {
				return nil, err
			}
		}
	}
	if n, ok := top["defaults"]; ok {
		f, err := p.fields(n, "defaults", "cooldown", "max_per_hour")
		if err != nil {
			return nil, err
		}
		if v, ok := f["cooldown"]; ok {
			if rs.Cooldown, err = p.duration(v, "defaults.cooldown", 0); err != nil {
				return nil, err
			}
			set.cooldown = true
		}
		if v, ok := f["max_per_hour"]; ok {
			if rs.MaxPerHour, err = p.integer(v, "defaults.max_per_hour", 1); err != nil {
				return nil, err
			}
		}
	}
	n, ok := top["rules"]
	if !ok {
		return nil, p.errf(root, "no \"rules\" (write \"rules: []\" for none)")
	}
	if n.Kind != yaml.SequenceNode {
		return nil, p.errf(n, "rules must be a list")
	}
	rs.setDefaults(&set)
	names := map[string]int{}
	for i, rn := range n.Content {
		r, err := p.rule(rn, i, rs)
		if err != nil {
			return nil, err
		}
		if line, dup := names[r.Name]; dup {
			return nil, p.errf(rn, "rule %q: name already used by the rule at line %d", r.Name, line)
		}
		names[r.Name] = r.Line
		rs.Rules = append(rs.Rules, r)
	}
	return rs, nil
}

// setFlags records which settings the file gave, where 0 means "off"
// rather than "default".
type setFlags struct{ maxActions, maxNodes, stormShare, cooldown bool }

func (rs *Rules) setDefaults(set *setFlags) {
	if set == nil {
		set = &setFlags{}
	}
	if !set.maxActions {
		rs.MaxActionsPerMinute = DefaultMaxActionsPerMinute
	}
	if !set.maxNodes {
		rs.MaxNodesPercent = DefaultMaxNodesPercent
	}
	if !set.stormShare {
		rs.StormShare = DefaultStormShare
	}
	if rs.StormMinTargets == 0 {
		rs.StormMinTargets = DefaultStormMinTargets
	}
	if rs.StormWindow == 0 {
		rs.StormWindow = DefaultStormWindow
	}
	if rs.CommandDeadline == 0 {
		rs.CommandDeadline = DefaultCommandDeadline
	}
	if rs.ResultGrace == 0 {
		rs.ResultGrace = DefaultResultGrace
	}
	if rs.Retention == 0 {
		rs.Retention = DefaultRetention
	}
	if !set.cooldown {
		rs.Cooldown = DefaultCooldown
	}
	if rs.MaxPerHour == 0 {
		rs.MaxPerHour = DefaultMaxPerHour
	}
}

var ruleNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

func (p *ruleParser) rule(n *yaml.Node, i int, rs *Rules) (*Rule, error) {
	what := fmt.Sprintf("rules[%d]", i)
	if n.Kind == yaml.MappingNode {
		for j := 0; j+1 < len(n.Content); j += 2 {
			if k, v := n.Content[j], n.Content[j+1]; k.Value == "name" && v.Kind == yaml.ScalarNode && ruleNameRE.MatchString(v.Value) {
				what = fmt.Sprintf("rule %q", v.Value)
			}
		}
	}
	f, err := p.fields(n, what, "name", "match", "match_re", "action", "signal", "target", "allow_host_link",
		"cooldown", "max_per_hour", "dry_run", "escalate")
	if err != nil {
		return nil, err
	}
	r := &Rule{Line: n.Line, Cooldown: rs.Cooldown, MaxPerHour: rs.MaxPerHour, Signal: uint32(syscall.SIGKILL)}
	nn, ok := f["name"]
	if !ok {
		return nil, p.errf(n, "%s has no name", what)
	}
	if r.Name, err = p.str(nn, what+".name"); err != nil {
		return nil, err
	}
	if !ruleNameRE.MatchString(r.Name) {
		return nil, p.errf(nn, "%s.name %q must be 1-63 letters, digits, '_', '.' or '-'", what, clip(r.Name))
	}
	what = fmt.Sprintf("rule %q", r.Name)
	if m, ok := f["match"]; ok {
		lf, err := p.fields(m, what+": match")
		if err != nil {
			return nil, err
		}
		r.Match = make(map[string]string, len(lf))
		for k, v := range lf {
			if r.Match[k], err = p.scalar(v, what+": match."+k); err != nil {
				return nil, err
			}
		}
	}
	if m, ok := f["match_re"]; ok {
		lf, err := p.fields(m, what+": match_re")
		if err != nil {
			return nil, err
		}
		r.MatchRE = make(map[string]*regexp.Regexp, len(lf))
		for k, v := range lf {
			s, err := p.scalar(v, what+": match_re."+k)
			if err != nil {
				return nil, err
			}
			if _, err := regexp.Compile(s); err != nil {
				var re *syntax.Error
				msg := err.Error()
				if errors.As(err, &re) {
					msg = string(re.Code)
				}
				return nil, p.errf(v, "%s: match_re.%s: bad regular expression %q: %s", what, k, clip(s), msg)
			}
			re, err := regexp.Compile("^(?:" + s + ")$")
			if err != nil {
				return nil, p.errf(v, "%s: match_re.%s: bad regular expression %q: %v", what, k, clip(s), err)
			}
			r.MatchRE[k] = re
		}
	}
	if len(r.Match)+len(r.MatchRE) == 0 {
		return nil, p.errf(n, "%s has no match or match_re: it would act on every alert", what)
	}
	an, ok := f["action"]
	if !ok {
		return nil, p.errf(n, "%s has no action", what)
	}
	if r.Action, err = p.action(an, what+": action"); err != nil {
		return nil, err
	}
	if sn, ok := f["signal"]; ok {
		if r.Action != ActionKill {
			return nil, p.errf(sn, "%s: signal is only for kill_container, not %s", what, r.Action)
		}
		if r.Signal, err = p.signal(sn, what+": signal"); err != nil {
			return nil, err
		}
	}
	tn, ok := f["target"]
	if !ok {
		return nil, p.errf(n, "%s has no target (the alert labels that name the node and the container or interface)", what)
	}
	if r.Target, err = p.target(tn, what, r.Action); err != nil {
		return nil, err
	}
	if v, ok := f["allow_host_link"]; ok {
		if r.AllowHostLink, err = p.boolean(v, what+": allow_host_link"); err != nil {
			return nil, err
		}
		if r.Action != ActionLinkUp {
			return nil, p.errf(v, "%s: allow_host_link is only for set_link_up", what)
		}
	}
	if v, ok := f["cooldown"]; ok {
		if r.Cooldown, err = p.duration(v, what+": cooldown", 0); err != nil {
			return nil, err
		}
	}
	if v, ok := f["max_per_hour"]; ok {
		if r.MaxPerHour, err = p.integer(v, what+": max_per_hour", 1); err != nil {
			return nil, err
		}
	}
	if v, ok := f["dry_run"]; ok {
		if r.DryRun, err = p.boolean(v, what+": dry_run"); err != nil {
			return nil, err
		}
	}
	if en, ok := f["escalate"]; ok {
		ef, err := p.fields(en, what+": escalate", "after", "action", "signal")
		if err != nil {
			return nil, err
		}
		e := &Escalation{Signal: uint32(syscall.SIGKILL)}
		v, ok := ef["after"]
		if !ok {
			return nil, p.errf(en, "%s: escalate has no after (how many actions within the hour before escalating)", what)
		}
		if e.After, err = p.integer(v, what+": escalate.after", 1); err != nil {
			return nil, err
		}
		if e.After > r.MaxPerHour {
			return nil, p.errf(v, "%s: escalate.after %d is over max_per_hour %d: it could never happen", what, e.After, r.MaxPerHour)
		}
		v, ok = ef["action"]
		if !ok {
			return nil, p.errf(en, "%s: escalate has no action", what)
		}
		if e.Action, err = p.action(v, what+": escalate.action"); err != nil {
			return nil, err
		}
		if e.Action.onContainer() != r.Action.onContainer() {
			return nil, p.errf(v, "%s: escalate.action %s does not act on the same kind of target as %s", what, e.Action, r.Action)
		}
		if sv, ok := ef["signal"]; ok {
			if e.Action != ActionKill {
				return nil, p.errf(sv, "%s: escalate.signal is only for kill_container", what)
			}
			if e.Signal, err = p.signal(sv, what+": escalate.signal"); err != nil {
				return nil, err
			}
		}
		r.Escalate = e
	}
	return r, nil
}

func (p *ruleParser) action(n *yaml.Node, what string) (Action, error) {
	s, err := p.scalar(n, what)
	if err != nil {
		return 0, err
	}
	a, err := ParseAction(s)
	if err != nil {
		return 0, p.errf(n, "%s: unknown action %q (known: restart_container, stop_container, kill_container, set_link_up, start_container)", what, clip(s))
	}
	return a, nil
}

func (p *ruleParser) target(n *yaml.Node, what string, a Action) (TargetLabels, error) {
	f, err := p.fields(n, what+": target", "node", "namespace", "container", "pod_namespace", "pod", "interface")
	if err != nil {
		return TargetLabels{}, err
	}
	var t TargetLabels
	for key, dst := range map[string]*string{"node": &t.Node, "namespace": &t.Namespace, "container": &t.Container,
		"pod_namespace": &t.PodNamespace, "pod": &t.Pod, "interface": &t.Interface} {
		if v, ok := f[key]; ok {
			if *dst, err = p.scalar(v, what+": target."+key); err != nil {
				return t, err
			}
			if *dst == "" {
				return t, p.errf(v, "%s: target.%s names no label", what, key)
			}
		}
	}
	missing := func(key string) error {
		return p.errf(n, "%s: target has no %s (the alert label naming the %s) for %s", what, key, strings.ReplaceAll(key, "_", " "), a)
	}
	if t.Node == "" {
		return t, missing("node")
	}
	if (t.Pod == "") != (t.PodNamespace == "") {
		return t, p.errf(n, "%s: target needs pod and pod_namespace together", what)
	}
	if t.Pod != "" && t.Container == "" {
		return t, missing("container")
	}
	if a.onContainer() {
		if t.Container == "" {
			return t, missing("container")
		}
		if t.Namespace == "" && t.Pod == "" {
			return t, missing("namespace")
		}
		if t.Interface != "" {
			return t, p.errf(f["interface"], "%s: target.interface is only for set_link_up", what)
		}
	} else if t.Interface == "" {
		return t, missing("interface")
	}
	return t, nil
}

// RuleSet holds the rules in force and reloads them from their file. A
// reload that fails keeps the rules in force. Safe for concurrent use.
type RuleSet struct {
	path string
	mu   sync.Mutex // serializes reloads
	cur  atomic.Pointer[Rules]
}

// NewRuleSet loads path; an empty path gives DefaultRules (no rule: only
// operators' requests act).
func NewRuleSet(path string) (*RuleSet, error) {
	s := &RuleSet{path: path}
	if path == "" {
		s.cur.Store(DefaultRules())
		return s, nil
	}
	rs, err := LoadRules(path)
	if err != nil {
		return nil, err
	}
	s.cur.Store(rs)
	return s, nil
}

// StaticRuleSet holds rs for good (tests, embedding).
func StaticRuleSet(rs *Rules) *RuleSet {
	s := &RuleSet{}
	s.cur.Store(rs)
	return s
}

// Current returns the rules in force.
func (s *RuleSet) Current() *Rules { return s.cur.Load() }

// Reload reads the file again. On error the rules in force stay, and the
// error says why and what is kept.
func (s *RuleSet) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.path == "" {
		return nil
	}
	rs, err := LoadRules(s.path)
	if err != nil {
		old := s.cur.Load()
		return fmt.Errorf("%w; keeping the %d rules loaded from %s", err, len(old.Rules), old.Source)
	}
	s.cur.Store(rs)
	return nil
}
