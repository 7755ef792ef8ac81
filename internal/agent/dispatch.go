package agent

import (
	"context"
	"runtime/debug"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilhq/vigil/internal/network"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// loop is the agent's one decision-making goroutine. It never waits on
// containerd, netlink or the disk: actions, sampling (sampler) and the state
// dir's commits (flusher) run on goroutines of their own and post their
// results here; its reads and writes of the state are of memory, and the
// flusher commits them in groups. What must be durable before it happens
// waits for the disk elsewhere: a command's action makes its acceptance
// durable first on its own goroutine, and a reply given without acting
// (refused, fenced, expired...) is sent by the flusher once it is written
// (replyWhenDurable). It stores the time of each turn for /healthz
// (heartbeat).
func (a *Agent) loop(ctx context.Context, errc <-chan error) error {
	defer close(a.done)
	tick := time.NewTicker(a.cfg.SampleInterval)
	defer tick.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()

	events := a.rt.Events()
	healthCh := a.probe.Changes()
	var netEvents <-chan network.Event
	if a.net != nil {
		netEvents = a.net.Events() // closed when the monitor's Run ends
	}
	var commands <-chan *vigilv1.Command
	if a.up != nil {
		commands = a.up.Commands()
	}
	for {
		a.heartbeat.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			a.onRuntimeEvent(ctx, ev)
		case ch := <-healthCh:
			a.onHealthChange(ctx, ch)
		case key := <-a.due:
			a.onRestartDue(ctx, key)
		case res := <-a.actions:
			a.onActionResult(ctx, res)
		case cmd := <-commands:
			a.onCommand(ctx, cmd)
		case ne, ok := <-netEvents:
			if !ok {
				netEvents = nil // a closed channel would be ready forever
				continue
			}
			a.onNetworkEvent(ne)
		case res := <-a.samples:
			a.onSample(ctx, res)
			a.releaseStartupMemory()
		case <-tick.C:
			a.kickFlush() // retries a failed write, if any; never waits for it
			a.settle()
		case <-prune.C:
			a.pruneStore()
		}
	}
}

func (a *Agent) now() time.Time { return a.nowFunc() }

// releaseStartupMemory hands the start-up burst back to the kernel once:
// after the first sample that follows containerd's first inventory, the
// network namespaces and the cgroup files of every container have been
// read, and the garbage of doing so is gone. Left alone, the runtime's
// background scavenger returns it over minutes; until then it counts in the
// agent's RSS. It costs one garbage collection.
func (a *Agent) releaseStartupMemory() {
	if a.startupReleased || !a.inventoryLoaded {
		return
	}
	a.startupReleased = true
	debug.FreeOSMemory()
}

// sendEvent hands a container event to the event sink and the uplink (when
// there are). It never blocks for long: the uplink buffers.
func (a *Agent) sendEvent(ev *vigilv1.ContainerEvent) {
	if ev.Time == nil {
		ev.Time = timestamppb.New(a.now())
	}
	if a.cfg.EventSink != nil {
		a.cfg.EventSink(ev)
	}
	if a.reporter != nil {
		if err := a.reporter.SendContainerEvent(ev); err != nil {
			a.log.Warn("event not sent upstream", "type", ev.GetType().String(), "err", err)
		}
	}
}

// settle lets every running container's tracker reset its backoff when the
// container has been up (and healthy) long enough.
func (a *Agent) settle() {
	now := a.now()
	var changed []*tracked
	a.mu.Lock()
	for _, t := range a.containers {
		if t.tracker.Settle(now) {
			changed = append(changed, t)
		}
	}
	a.mu.Unlock()
	for _, t := range changed {
		a.persist(t)
		a.sendContainerEvent(t, vigilv1.ContainerEventType_CONTAINER_EVENT_TYPE_STATE_CHANGED, "restart backoff reset after a stable run", nil, nil)
	}
}

// sendContainerEvent builds the container's full state and sends an event.
func (a *Agent) sendContainerEvent(t *tracked, typ vigilv1.ContainerEventType, msg string, exit *vigilv1.ExitStatus, d *vigilv1.RestartDecision) {
	a.sendEvent(&vigilv1.ContainerEvent{
		Type:      typ,
		Time:      timestamppb.New(a.now()),
		Container: a.containerProto(t),
		Exit:      exit,
		Decision:  d,
		Message:   msg,
	})
}
