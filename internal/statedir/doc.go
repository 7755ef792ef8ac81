// Package statedir is the agent's durable state on its node: lifetime
// counters by workload identity, per-container restart records, accepted
// commands and the boot id, in one directory that survives anything short
// of its loss.
//
// Writes are atomic (a temporary file, fsync, rename, fsync of the
// directory), one agent at a time holds the directory (an exclusive lock
// that names the holder's pid), every write also replaces a last-good copy
// with the same content that a corrupt file falls back to (nothing lost;
// the recovery logged and counted), older formats are migrated on read, and
// a write that fails is kept in memory, counted and retried by Flush.
package statedir
