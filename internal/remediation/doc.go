// Package remediation turns Alertmanager alerts and operators' requests into
// at most one fenced, budgeted, journaled command per alert for an agent to
// carry out.
//
// # Path
//
//	Alertmanager ── POST /api/v1/alerts (AlertsHandler) ── ParseWebhook
//	  → Receive: for each alert, the first matching rule (Rules), the target
//	    resolved by the FleetView, the intent (fingerprint, startsAt, the
//	    rule's action) looked up, the budgets read, Decide (pure), and in ONE
//	    store transaction conditioned on every revision read: the intent
//	    claimed (create-if-absent), the budgets charged, the record, the
//	    journal, the command in the node's outbox. Then the webhook answers.
//	  → Deliver (the aggregator, per node stream it holds): Dispatch marks a
//	    command sent (pending → dispatched, once across replicas) and the
//	    aggregator sends it on the stream.
//	  → the agent checks the fence and acts; RecordResult journals its answer.
//	Operators: Request enters the same path after the rules.
//
// Exactly once comes from the store's conditions, never from a lock: the
// claim is a create-if-absent, and budgets are read and written in the
// same transaction, which fails and is tried again (up to
// Config.MaxAttempts) if any of them changed. This holds with several
// aggregator replicas on etcd as on one with bbolt. A local mutex orders one
// replica's decisions only to spare them conflicts with each other.
// Webhooks received together are committed together (group commit), so the
// store's fsync is shared.
//
// Alertmanager's replicas send the same alert with the same fingerprint and
// startsAt (Prometheus sets startsAt, the rule's active-at time, in what it
// sends to each), so their deliveries are one intent. A resolved alert and
// a new firing have a new startsAt.
//
// # What is claimed, what is held
//
// Acting, dry run, refusing to fight an owner, and an alert fenced because
// it saw a container since replaced claim the intent: later
// deliveries of the same firing are duplicates. Limits hold without
// claiming (cooldown, budget, storm, node down, unknown target, escalated,
// and node network: an alert's restart, kill or stop of a container whose
// agent blamed its failing probe on the node's network, which the
// FleetView's TargetState.HealthBlamedOnNode says): the decision is
// journaled, and Alertmanager's next delivery of a still-firing alert
// (group_interval, repeat_interval) is decided again. Limits delay actions;
// they never drop the alert for good.
//
// # Commands across restarts
//
// A command is pending (in the outbox, not sent) or dispatched (sent, no
// result). After an aggregator restart, pending commands are resumed: they
// are still in the outbox and Deliver sends them when the node's stream is
// held again, if their deadline has not passed. Dispatched ones are not sent
// again: they wait for the agent's result (the agent keeps unacknowledged
// messages across reconnects and resends it). Expire (Run, every Tick)
// marks a pending command past its deadline expired (certainly not run),
// and a dispatched one without a result by deadline + ResultGrace unknown
// (it may have run). Neither is ever sent again. TestReopenBetweenClaimAndResult
// and TestExpireAndUnknown reopen the store to check this.
//
// # Wiring it into the aggregator
//
//	rules, err := remediation.NewRuleSet(path)        // "" = no rule; SIGHUP: rules.Reload()
//	eng, err := remediation.New(remediation.Config{
//		Store: st, Fleet: fleetView, Rules: rules, Registry: reg,
//		Leader: nil,     // or the etcd election's IsLeader with several replicas
//		MaxTxnOps: 5000, // with bbolt only: etcd takes at most 128 (default 100)
//	})
//	go eng.Run(ctx)                                   // expiry, storm gauge, sweep
//	mux.Handle("POST /api/v1/alerts", auth(eng.AlertsHandler()))
//	mux.Handle("GET /api/v1/remediations", auth(eng.RemediationsHandler()))
//	// per node stream held, under the stream's context:
//	go eng.Deliver(streamCtx, node, func(c remediation.Command) error {
//		return gateway.SendCommand(node, remediation.CommandToProto(c))
//	})
//	// on an agent's CommandResult:
//	id, outcome, msg, err := remediation.ResultFromProto(res)
//	err = eng.RecordResult(ctx, id, outcome, msg)
//	// gRPC RequestRemediation (operator role; who = the caller's identity):
//	req, err := remediation.RequestFromProto(in, who)
//	rec, err := eng.Request(ctx, req)                  // → RemediationToProto(rec)
//	// gRPC ListRemediations:
//	list, err := eng.List(ctx, remediation.ListFilterFromProto(in))
//
// The FleetView is the aggregator's read model in domain types (Lookup of
// a container by namespace and id or by pod, with its owner, restart count,
// whether its health is blamed on its node's network, and whether its node
// is up; Size). Over the aggregator's protobuf
// containers it is a few lines: the node's containers that
// ContainerMatches(ref, node, c) (ErrNotFound for none, ErrInvalid for
// more than one), answered with ContainerTargetState(ref, node, c, up).
// StaticFleet is a fake shipped with the interface.
//
// Key layout in the store: see keys.go. Metrics: vigil_remediations_total,
// vigil_remediations_suppressed_total, vigil_remediation_webhook_requests_total,
// vigil_remediation_duration_seconds, vigil_remediation_storm_active.
package remediation
