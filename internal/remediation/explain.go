package remediation

import "time"

// Explanation is what the rules would do with one alert.
type Explanation struct {
	Alert Alert
	// Rule that matched; "" when none did (Decision is then zero).
	Rule string
	// Ref is the target the rule's labels name.
	Ref      TargetRef
	Decision Decision
}

// Explain decides alerts against rs and fleet as if no budget were spent
// and no storm raged, without the store: what each rule would do, for
// reviewing a rules file (vigilctl's dry run of rules) before it is loaded.
// It reads nothing else and writes nothing.
func Explain(rs *Rules, fleet FleetView, alerts []Alert, now time.Time) []Explanation {
	out := make([]Explanation, len(alerts))
	size := fleet.Size()
	for i, a := range alerts {
		out[i].Alert = a
		r := rs.Match(a.Labels)
		if r == nil {
			continue
		}
		ref := r.Ref(a.Labels)
		st, err := fleet.Lookup(ref)
		out[i].Rule, out[i].Ref = r.Name, ref
		out[i].Decision = Decide(Input{Now: now, Rules: rs, Rule: r, Action: r.Action, Signal: r.Signal, Ref: ref, State: st,
			LookupErr: err, AlertContainerID: a.Labels["container_id"], Fleet: size})
	}
	return out
}
