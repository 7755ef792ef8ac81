// Package remediation turns Alertmanager alerts and operators' requests into
// at most one fenced, budgeted, journaled command per alert for an agent to
// carry out.
package remediation
