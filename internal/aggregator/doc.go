// Package aggregator holds the fleet's state as the agents report it, serves
// the agents' streams (AgentGateway), the operator API (Vigil) and its JSON
// endpoints, and feeds the Prometheus exposition.
package aggregator
