// Package deploy holds the tests of what Vigil ships for deployment: the
// Kubernetes manifests (deploy/daemonset), the systemd unit, the Prometheus
// rules and scrape configs, the Alertmanager configuration and the Grafana
// dashboards. It has no code of its own; the tests check each file with the
// tool that will read it (promtool, amtool, kubectl, systemd-analyze) and
// against the Kubernetes API types, so that what users apply is what was
// tested.
package deploy
