package agent

import (
	"context"
	"encoding/json"
	"time"

	"github.com/vigilhq/vigil/internal/runtime"
	"github.com/vigilhq/vigil/internal/statedir"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// markAnnounced records that t's ADDED event was sent. It is kept in
// memory and reaches the disk with the next write (flushState after the
// first inventory: one write for every container found).
func (a *Agent) markAnnounced(t *tracked) {
	t.announced = true
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		tx.Container(t.c.Key().String()).Announced = true
		return false
	})
}

// flushState writes what the state holds in memory only, if anything: a
// change kept unwritten on purpose, or one whose write failed (retried so,
// once per sampling interval).
func (a *Agent) flushState() {
	if err := a.store.Flush(); err != nil {
		a.log.Error("cannot write to the state dir; the state is kept in memory and the write retried", "err", err)
	}
}

// persist writes the container's restart state to the state dir.
func (a *Agent) persist(t *tracked) { a.save(t, nil) }

// save records the container's restart state, and whatever fn changes along
// with it (counters, the exit bookkeeping), as one change, and has the
// flusher commit it (a group commit: see flusher). It does not wait for the
// disk. It runs on the loop goroutine, which alone writes t.c.
//
// Counting an exit exactly once does not need the count on disk before the
// loop goes on: until it is, containerd still has the exited task, and an
// agent that died in between counts the exit again from it, to the same
// total. What removes that evidence waits for the disk: a restart writes
// its begun mark (with every change before it) before it deletes the task.
func (a *Agent) save(t *tracked, fn func(tx statedir.Tx, rec *statedir.ContainerRecord)) {
	a.mu.RLock()
	state, err := json.Marshal(&t.tracker.State)
	pending := t.tracker.State.Pending
	a.mu.RUnlock()
	if err != nil {
		a.log.Error("encode restart state", "container", t.c.ID, "err", err)
		return
	}
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		rec := tx.Container(t.c.Key().String())
		rec.Restart = state
		if !pending {
			rec.RestartBegun, rec.Output = time.Time{}, statedir.TaskOutput{}
		}
		if fn != nil {
			fn(tx, rec)
		}
		tx.Counters(t.identity).LastSeen = a.now()
		return false
	})
	a.kickFlush()
}

// commitDelay is how long the flusher waits after the first change before
// it writes: the changes of a burst (exits of many containers at once) made
// meanwhile share its fsyncs, and a restart's begun mark, written at once by
// the restart, usually carries the exit's change before the flusher does.
const commitDelay = 10 * time.Millisecond

// kickFlush tells the flusher that the state holds changes to commit. It
// never blocks.
func (a *Agent) kickFlush() {
	select {
	case a.flushKick <- struct{}{}:
	default: // a commit is already due; it carries these changes too
	}
}

// flusher commits the state's changes (Store.Flush) commitDelay after they
// are made, off the loop, so that the loop never waits for the disk, then
// sends the replies that waited for them (replyWhenDurable). A failed
// write is retried at the next change and every sampling interval (the
// loop's tick kicks it); what is left when the agent stops is written by
// the store's Close.
func (a *Agent) flusher(ctx context.Context) error {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.flushKick:
		}
		t.Reset(commitDelay)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		a.flushState()
		a.releaseReplies()
	}
}

// durableReply is a command result to send once the state that records it
// is durable (mark: statedir.Store.Mark when it was recorded).
type durableReply struct {
	mark uint64
	r    *vigilv1.CommandResult
}

// replyWhenDurable sends r once every change to the state made so far is
// on disk: at once when it is, else after the flusher's next successful
// write (retried every sampling interval when writes fail). A reply that
// no agent acted on (REFUSED, FENCED, NOT_FOUND, EXPIRED) is so never seen
// upstream before the agent can answer a redelivery the same way after a
// crash; one whose record failed to write is not sent as if it were
// durable.
func (a *Agent) replyWhenDurable(r *vigilv1.CommandResult) {
	mark := a.store.Mark()
	if a.store.Durable(mark) {
		a.sendCommandResult(r)
		return
	}
	a.replyMu.Lock()
	a.replies = queueReply(a.replies, durableReply{mark: mark, r: r})
	a.replyMu.Unlock()
	a.kickFlush()
}

// maxPendingReplies bounds the replies waiting for the disk: while writes
// fail, every redelivery would add one. Dropping the oldest loses nothing
// durable: its command's record is in the state, and the aggregator
// delivers the command again until it has a result, which is answered
// from that record.
const maxPendingReplies = 1000

// queueReply adds x to q, replacing a waiting reply for the same command
// (the newer one waits for at least as much) and dropping the oldest past
// maxPendingReplies.
func queueReply(q []durableReply, x durableReply) []durableReply {
	for i := range q {
		if q[i].r.GetCommandId() == x.r.GetCommandId() {
			q = append(q[:i], q[i+1:]...)
			break
		}
	}
	if len(q) >= maxPendingReplies {
		q = append(q[:0], q[len(q)-maxPendingReplies+1:]...)
	}
	return append(q, x)
}

// releaseReplies sends, in order, the replies whose state is durable now.
// Flusher goroutine.
func (a *Agent) releaseReplies() {
	a.replyMu.Lock()
	var ready []*vigilv1.CommandResult
	keep := a.replies[:0]
	for _, x := range a.replies {
		if a.store.Durable(x.mark) {
			ready = append(ready, x.r)
		} else {
			keep = append(keep, x)
		}
	}
	a.replies = keep
	a.replyMu.Unlock()
	for _, r := range ready {
		a.sendCommandResult(r)
	}
}

// touchCounters marks the identity as live and, for kubelet containers,
// folds the kubelet's restart count into the lifetime restarts. Both are
// changes in memory: the latter kicks the flusher (its count and the
// kubelet's count it came from are written together, so an agent that dies
// before the write folds it again, to the same total); a LastSeen alone
// waits for the next write.
func (a *Agent) touchCounters(t *tracked) {
	changed := false
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		c := tx.Counters(t.identity)
		c.LastSeen = a.now()
		if t.c.Pod == nil || t.c.Pod.Sandbox || t.c.Manager != runtime.ManagerKubelet {
			return false
		}
		n := t.c.Pod.RestartCount
		if n == c.KubeletRestartsSeen {
			return false
		}
		if n > c.KubeletRestartsSeen {
			c.Restarts += uint64(n - c.KubeletRestartsSeen)
		} else {
			c.Restarts += uint64(n) // a new pod with the same name
		}
		c.KubeletRestartsSeen = n
		changed = true
		return false
	})
	if changed {
		a.kickFlush()
	}
}

func (a *Agent) bumpCounters(t *tracked, fn func(*statedir.Counters)) {
	_ = a.store.UpdateIf(func(tx statedir.Tx) bool {
		c := tx.Counters(t.identity)
		fn(c)
		c.LastSeen = a.now()
		return false
	})
	a.kickFlush()
}

func (a *Agent) pruneStore() {
	live := map[string]bool{}
	liveContainers := map[string]bool{}
	a.mu.RLock()
	for k, t := range a.containers {
		live[t.identity] = true
		liveContainers[k.String()] = true
	}
	a.mu.RUnlock()
	a.store.Prune(live, liveContainers, a.now().Add(-24*time.Hour))
	a.kickFlush()
}
