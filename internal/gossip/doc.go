// Package gossip is the agents' membership protocol: every agent joins a
// memberlist (SWIM) cluster of its peers, so that a node that died can be
// told from one that only lost its path to the aggregator.
//
// A Member wraps one memberlist instance: it joins seeds (a list, a DNS name
// such as a headless Service, or seeds learned later with AddSeeds) and keeps
// retrying in the background, encrypts gossip with keys from a file that it
// reloads without a restart, advertises a few bytes of metadata (Meta), and
// keeps a view of every peer (alive, suspect, dead, left, since when) that
// the agent reports upstream.
//
// memberlist calls its delegates while it holds its own locks. The delegates
// here only post to a bounded queue (see Config.EventQueue for what happens
// when it is full); one goroutine owned by Member.Run applies the events to
// the view. Nothing of the agent's is locked from memberlist's goroutines.
//
// memberlist tells its delegates of joins, leaves (dead or left alike) and
// metadata updates, not of suspicions. A member learns of its own
// suspicions from memberlist's log line ("Suspect X has failed, no acks
// received", turned into an event by the logger it gives memberlist), and
// pings its suspects every probe interval to see them alive again; it
// tells "left" from "dead" by the Leaving flag a member puts in its
// metadata before it leaves. A suspicion gossiped by another member is not
// seen.
//
// condition.go holds the pure decision logic on top of those views: the
// aggregator's node condition (Assess), the fleet-level guard against blaming
// nodes for the aggregator's own failure (Fleet), and the agent's own
// Isolated rule (Local).
//
// # Wiring
//
// The agent: New(Config{Name: node, AgentVersion, BindAddr, AdvertiseAddr
// (the node or pod address), Seeds, SeedDNS (the headless Service),
// KeyFile, Logger}); Run(ctx) in its errgroup; register the Member on its
// self-metrics registry (Collect); AddSeeds with seeds from the
// aggregator's hello reply; SetLocalState when its stream or containerd's
// health changes; ReloadKeys on SIGHUP. On every receive from Changed (and
// periodically) it sends Views upstream as a PeerView (observer: its node
// name; per peer: name, Addr, State, Since). While its stream is down it
// calls Local(false, Views(), ProbePeers(3)) and refuses remote actions
// while that is Isolated; Isolation keeps the episode for PeerView's
// isolated_since and isolated_until.
//
// The aggregator: for each node, the PeerReport of every observer that
// mentions it (state, since, when that observer's view arrived, and whether
// the observer's own stream is down: then its last alive or suspect does
// not count, its last dead or left does);
// Assess(streamUp, lastSeen, reports, now, ConditionConfig{}) gives the
// node's condition and reason; Fleet over the previous and new conditions
// of all nodes says when to blame itself or the network instead.
//
// # Key rotation
//
// The key file holds one base64 key per line (16, 24 or 32 bytes: AES-128,
// -192, -256); the first line is the primary key, used to encrypt, and every
// line is tried to decrypt. The file is read again every
// Config.KeyReloadInterval (and by ReloadKeys), and the keyring is changed in
// place: new keys installed, the first line made primary, keys no longer in
// the file removed. To rotate without a restart and without a partition:
//
//  1. append the new key as a second line on every node, and wait until every
//     agent has reloaded (all can now decrypt it);
//  2. swap the lines on every node, so the new key is first (all now encrypt
//     with it, and still accept the old one from nodes not yet swapped);
//  3. remove the old line everywhere.
//
// A file that cannot be read or parsed on reload is logged, counted, and
// changes nothing: the keys in use stay.
package gossip
