// Package replicasbench measures what running the aggregator as several
// replicas sharing etcd costs and gives (issue 27):
//
//   - BenchmarkWebhookToAgent: an Alertmanager webhook to the command at a
//     real agent uplink, p50 and p99, with the journal on bbolt and on a
//     real 3-member etcd cluster on loopback, in the same run;
//   - TestFleet: the load generator's fleet (vigil-loadgen) spread over R
//     real vigil-aggregator processes sharing etcd: each replica's ingest
//     CPU, RSS and scrape time, for every R given, in the same run;
//   - TestFailover: real agent uplinks on replicas sharing etcd; the
//     replica holding them is killed (SIGKILL) and the time until another
//     replica exposes each node again is measured.
//
// The tests are benchmarks: they skip unless given their flags, so that
// `make test` never starts thousands of simulated nodes:
//
//	go test -run '^$' -bench WebhookToAgent -benchtime 500x ./test/bench/replicas
//	go test -timeout 60m -v -run TestFleet ./test/bench/replicas -fleet-replicas 1,3 -fleet-nodes 2000
//	go test -timeout 20m -v -run TestFailover ./test/bench/replicas -failover-runs 5
//
// docs/benchmarks/replicas.md has the figures and the machine.
package replicasbench
