package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	apitypes "github.com/containerd/containerd/api/types"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/errdefs"
)

// session is one connection to containerd: probe, subscribe, list and
// reconcile, then follow events until the stream breaks, a probe fails, or
// ctx ends. Everything it starts stops before it returns.
func (r *Runtime) session(ctx context.Context) error {
	if _, err := os.Stat(socketPath(r.cfg.Address)); err != nil {
		// Down, not hanging: no call is made, no timeout is counted.
		return fmt.Errorf("containerd socket %s: %w: %v", r.cfg.Address, errdefs.ErrUnavailable, err)
	}
	c, err := dial(r.cfg.Address, r.cfg.CallTimeout)
	if err != nil {
		return fmt.Errorf("containerd client for %s: %w: %v", r.cfg.Address, errdefs.ErrUnavailable, err)
	}
	defer c.Close()
	if err := r.probe(ctx, c); err != nil {
		return err
	}

	// Subscribe before listing, so that no change falls between the two.
	sctx, cancel := context.WithCancel(ctx)
	sub, err := c.events.Subscribe(sctx, &eventsapi.SubscribeRequest{Filters: r.eventFilters()})
	if err != nil {
		cancel()
		return fmt.Errorf("containerd event subscription: %w", translateErr(err))
	}
	envs := make(chan *apitypes.Envelope)
	errs := make(chan error, 1)
	received := make(chan struct{})
	go func() {
		defer close(received)
		for {
			env, err := sub.Recv()
			if err != nil {
				errs <- err
				return
			}
			select {
			case envs <- env:
			case <-sctx.Done():
				return
			}
		}
	}()
	// The receiver ends once the stream is cancelled; wait for it, so that
	// nothing of the session outlives it.
	defer func() {
		cancel()
		<-received
	}()

	if err := r.sync(ctx, c); err != nil {
		return err
	}
	r.client.Store(c)
	r.hung.Store(false)
	if r.everUp.Swap(true) {
		r.reconnected.Add(1)
	}
	r.available.Store(true)
	r.mu.RLock()
	n := len(r.inv)
	r.mu.RUnlock()
	r.log.Info("containerd available", "address", r.cfg.Address, "version", r.Version(), "containers", n)
	r.emit(ctx, Event{Type: EventAvailable, Time: time.Now()})

	probe := time.NewTicker(r.cfg.ProbeInterval)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("event stream closed: %w", errdefs.ErrUnavailable)
			}
			return fmt.Errorf("containerd event stream: %w", translateErr(err))
		case env := <-envs:
			if err := r.handle(ctx, c, env); err != nil {
				return err
			}
		case <-probe.C:
			if err := r.probe(ctx, c); err != nil {
				return err
			}
		}
	}
}

// probe asks containerd for its version, recording the latency.
func (r *Runtime) probe(ctx context.Context, c *apiClient) error {
	var v *versionapi.VersionResponse
	start := time.Now()
	err := r.call(ctx, "version", func(ctx context.Context) error {
		var err error
		v, err = c.version.Version(ctx, &emptypb.Empty{})
		return err
	})
	if err != nil {
		return err
	}
	r.latency.Store(int64(time.Since(start)))
	s := v.Version
	r.version.Store(&s)
	return nil
}

// eventFilters selects the task and container topics, in the configured
// namespaces only when some are configured.
func (r *Runtime) eventFilters() []string {
	const topics = `topic~="^/(tasks|containers)/"`
	if len(r.cfg.Namespaces) == 0 {
		return []string{topics}
	}
	out := make([]string, 0, len(r.cfg.Namespaces))
	for _, ns := range r.cfg.Namespaces {
		out = append(out, fmt.Sprintf("namespace==%q,%s", ns, topics))
	}
	return out
}

func (r *Runtime) wantNamespace(ns string) bool {
	return len(r.cfg.Namespaces) == 0 || slices.Contains(r.cfg.Namespaces, ns)
}

// sync lists every watched namespace's containers and tasks, replaces the
// inventory, and emits the differences from the previous one. On the first
// sync only EventAdded is emitted (with each container's current state);
// later syncs also emit what happened while disconnected (started, exited
// with its status, paused, resumed, task deleted, removed).
func (r *Runtime) sync(ctx context.Context, c *apiClient) error {
	r.images.reset()
	nss := r.cfg.Namespaces
	if len(nss) == 0 {
		err := r.call(ctx, "namespaces_list", func(ctx context.Context) error {
			resp, err := c.namespaces.List(ctx, &namespacesapi.ListNamespacesRequest{})
			if err != nil {
				return err
			}
			for _, n := range resp.Namespaces {
				nss = append(nss, n.Name)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	r.mu.RLock()
	old := r.inv
	r.mu.RUnlock()

	fresh := make(map[container.Key]*entry, len(old))
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		var ccs []*containersapi.Container
		err := r.call(nctx, "containers_list", func(ctx context.Context) error {
			var err error
			ccs, err = listContainers(ctx, c)
			return err
		})
		if err != nil {
			return err
		}
		var procs []*tasktypes.Process
		err = r.call(nctx, "tasks_list", func(ctx context.Context) error {
			resp, err := c.tasks.List(ctx, &tasksapi.ListTasksRequest{})
			if err == nil {
				procs = resp.Tasks
			}
			return err
		})
		if err != nil {
			return err
		}
		byID := make(map[string]*tasktypes.Process, len(procs))
		for _, p := range procs {
			id := p.ContainerID
			if id == "" {
				id = p.ID // containerd 1.6 fills only ID, with the container's id
			}
			byID[id] = p
		}
		for _, cc := range ccs {
			k := container.Key{Namespace: ns, ID: cc.ID}
			e := r.describe(nctx, c, ns, cc, old[k])
			r.applyTask(e, old[k], byID[cc.ID])
			fresh[k] = e
		}
	}

	var evs []Event
	now := time.Now()
	for k, e := range fresh {
		evs = append(evs, diff(k, old[k], e, r.synced, now)...)
	}
	for k, o := range old {
		if _, ok := fresh[k]; !ok {
			if o.c.State == StateRunning || o.c.State == StatePaused {
				r.log.Warn("container removed while disconnected; its exit status is lost", "namespace", k.Namespace, "id", k.ID)
			}
			c := o.c.clone()
			evs = append(evs, Event{Type: EventRemoved, Time: now, Key: k, Container: &c})
		}
	}
	r.mu.Lock()
	r.inv = fresh
	r.mu.Unlock()
	r.synced = true
	for _, ev := range evs {
		r.emit(ctx, ev)
	}
	return nil
}

// applyTask sets e's task fields from the listed process p (nil: no task).
func (r *Runtime) applyTask(e *entry, prev *entry, p *tasktypes.Process) {
	if p == nil {
		e.taskPresent = false
		e.c.Pid = 0
		e.c.NetNSInode = 0
		e.c.State = StateCreated
		if e.c.LastExit != nil || (prev != nil && prev.c.State != StateCreated && prev.c.State != StateUnknown) {
			e.c.State = StateStopped
		}
		return
	}
	e.taskPresent = true
	e.c.Output = TaskOutput{Stdout: p.Stdout, Stderr: p.Stderr, Terminal: p.Terminal}
	switch p.Status {
	case tasktypes.Status_RUNNING, tasktypes.Status_PAUSED, tasktypes.Status_PAUSING:
		e.c.State = StateRunning
		if p.Status != tasktypes.Status_RUNNING {
			e.c.State = StatePaused
		}
		if prev != nil && prev.c.Pid == p.Pid && (prev.c.State == StateRunning || prev.c.State == StatePaused) {
			e.c.Pid = p.Pid // same task as before: keep its start time and netns
			return
		}
		e.oomSeen = false
		r.setRunning(e, p.Pid, time.Time{})
	case tasktypes.Status_STOPPED:
		e.c.State = StateStopped
		e.c.Pid = 0
		e.c.NetNSInode = 0
		at := p.ExitedAt.AsTime()
		if e.c.LastExit == nil || !e.c.LastExit.At.Equal(at) {
			ex := classifyExit(p.ExitStatus, at, e.oomSeen)
			e.c.LastExit = &ex
		}
	case tasktypes.Status_CREATED:
		e.c.State = StateCreated
		e.c.Pid = p.Pid
	default:
		e.c.State = StateUnknown
	}
}

// diff returns the events that turn old into cur for container k. When
// resync is false (the first sync) only EventAdded is returned.
func diff(k container.Key, old, cur *entry, resync bool, now time.Time) []Event {
	ev := func(t EventType) Event {
		c := cur.c.clone()
		e := Event{Type: t, Time: now, Key: k, Container: &c}
		if t == EventExited {
			x := *c.LastExit
			e.Exit = &x
		}
		return e
	}
	var out []Event
	if old == nil {
		out = append(out, ev(EventAdded))
		if !resync {
			return out
		}
		// A container new to a resync that is stopped is announced with
		// EventAdded alone, which carries its last exit: the agent counts
		// and decides on that exit from it. A Started and an Exited after
		// it replayed the same run as if it had started anew: the agent
		// took the start for an operator's (which resets an on-failure
		// policy's count) and decided on the exit again (test/crash, after
		// an agent start whose first sync failed half way).
		if cur.c.State == StateRunning || cur.c.State == StatePaused {
			out = append(out, ev(EventStarted))
		}
		return out
	}
	wasLive := old.c.State == StateRunning || old.c.State == StatePaused
	isLive := cur.c.State == StateRunning || cur.c.State == StatePaused
	newExit := cur.c.LastExit != nil && (old.c.LastExit == nil || !old.c.LastExit.At.Equal(cur.c.LastExit.At))
	switch {
	case isLive && (!wasLive || old.c.Pid != cur.c.Pid):
		out = append(out, ev(EventStarted))
		if cur.c.State == StatePaused {
			out = append(out, ev(EventPaused))
		}
	case isLive && old.c.State == StateRunning && cur.c.State == StatePaused:
		out = append(out, ev(EventPaused))
	case isLive && old.c.State == StatePaused && cur.c.State == StateRunning:
		out = append(out, ev(EventResumed))
	case cur.c.State == StateStopped && newExit:
		if !wasLive {
			out = append(out, ev(EventStarted)) // a whole run happened while away
		}
		out = append(out, ev(EventExited))
	}
	if old.taskPresent && !cur.taskPresent {
		out = append(out, ev(EventTaskDeleted))
	}
	return out
}

// handle applies one containerd event to the inventory and emits the
// matching Event. It returns an error only when containerd stops answering.
func (r *Runtime) handle(ctx context.Context, c *apiClient, env *apitypes.Envelope) error {
	if env == nil || env.Event == nil || !r.wantNamespace(env.Namespace) {
		return nil
	}
	v, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		r.log.Debug("undecodable containerd event", "topic", env.Topic, "err", err)
		return nil
	}
	ns, at := env.Namespace, protoTime(env.Timestamp)
	switch e := v.(type) {
	case *eventtypes.ContainerCreate:
		return r.onContainer(ctx, c, container.Key{Namespace: ns, ID: e.ID}, at, true)
	case *eventtypes.ContainerUpdate:
		return r.onContainer(ctx, c, container.Key{Namespace: ns, ID: e.ID}, at, false)
	case *eventtypes.ContainerDelete:
		r.mu.Lock()
		old, ok := r.inv[container.Key{Namespace: ns, ID: e.ID}]
		delete(r.inv, container.Key{Namespace: ns, ID: e.ID})
		r.mu.Unlock()
		if ok {
			cc := old.c.clone()
			r.emit(ctx, Event{Type: EventRemoved, Time: at, Key: container.Key{Namespace: ns, ID: e.ID}, Container: &cc})
		}
	case *eventtypes.TaskCreate:
		return r.onTask(ctx, c, container.Key{Namespace: ns, ID: e.ContainerID}, at, func(en *entry) (EventType, *Exit) {
			en.c.State = StateCreated
			en.c.Pid = e.Pid
			en.taskPresent = true
			if io := e.GetIO(); io != nil {
				en.c.Output = TaskOutput{Stdout: io.Stdout, Stderr: io.Stderr, Terminal: io.Terminal}
			}
			return 0, nil
		})
	case *eventtypes.TaskStart:
		return r.onTask(ctx, c, container.Key{Namespace: ns, ID: e.ContainerID}, at, func(en *entry) (EventType, *Exit) {
			if (en.c.State == StateRunning || en.c.State == StatePaused) && en.c.Pid == e.Pid {
				return 0, nil // already seen in the listing
			}
			en.c.State = StateRunning
			en.oomSeen = false
			r.setRunning(en, e.Pid, at)
			return EventStarted, nil
		})
	case *eventtypes.TaskExit:
		if e.ID != "" && e.ID != e.ContainerID {
			return nil // an exec'd process
		}
		k := container.Key{Namespace: ns, ID: e.ContainerID}
		return r.onTaskOf(ctx, c, k, at, r.leftovers.is(k, e.Pid, false), func(en *entry) (EventType, *Exit) {
			return r.exited(en, e.ExitStatus, e.ExitedAt.AsTime())
		})
	case *eventtypes.TaskOOM:
		return r.onTask(ctx, c, container.Key{Namespace: ns, ID: e.ContainerID}, at, func(en *entry) (EventType, *Exit) {
			en.oomSeen = true
			return EventOOM, nil
		})
	case *eventtypes.TaskPaused:
		return r.onTask(ctx, c, container.Key{Namespace: ns, ID: e.ContainerID}, at, func(en *entry) (EventType, *Exit) {
			if en.c.State == StatePaused {
				return 0, nil
			}
			en.c.State = StatePaused
			return EventPaused, nil
		})
	case *eventtypes.TaskResumed:
		return r.onTask(ctx, c, container.Key{Namespace: ns, ID: e.ContainerID}, at, func(en *entry) (EventType, *Exit) {
			if en.c.State != StatePaused {
				return 0, nil
			}
			en.c.State = StateRunning
			return EventResumed, nil
		})
	case *eventtypes.TaskDelete:
		if e.ID != "" && e.ID != e.ContainerID {
			return nil
		}
		k := container.Key{Namespace: ns, ID: e.ContainerID}
		leftover := r.leftovers.is(k, e.Pid, true)
		err := r.onTaskOf(ctx, c, k, at, leftover, func(en *entry) (EventType, *Exit) {
			if en.c.State == StateRunning || en.c.State == StatePaused {
				// The exit event was not seen (or came after the delete):
				// the delete carries the status.
				return r.exited(en, e.ExitStatus, e.ExitedAt.AsTime())
			}
			return 0, nil
		})
		if err != nil {
			return err
		}
		return r.onTaskOf(ctx, c, k, at, leftover, func(en *entry) (EventType, *Exit) {
			if !en.taskPresent {
				return 0, nil
			}
			en.taskPresent = false
			en.c.Pid = 0
			en.c.NetNSInode = 0
			return EventTaskDeleted, nil
		})
	}
	return nil
}

// exited records a task exit on en; a repeated exit (the listing already
// had it) yields no event.
func (r *Runtime) exited(en *entry, code uint32, at time.Time) (EventType, *Exit) {
	if en.c.State == StateStopped && en.c.LastExit != nil && en.c.LastExit.At.Equal(at) {
		return 0, nil
	}
	oom := en.oomSeen
	if !oom && code == 128+uint32(syscall.SIGKILL) && en.cgroupRel != "" {
		oom = r.oomKilledInCgroup(en.cgroupRel)
	}
	ex := classifyExit(code, at, oom)
	en.c.State = StateStopped
	en.c.Pid = 0
	en.c.NetNSInode = 0
	en.c.LastExit = &ex
	x := ex
	return EventExited, &x
}

// onContainer (re)reads container k from containerd after a create or
// update event; a create emits EventAdded.
func (r *Runtime) onContainer(ctx context.Context, c *apiClient, k container.Key, at time.Time, created bool) error {
	nctx := namespaces.WithNamespace(ctx, k.Namespace)
	var cc *containersapi.Container
	err := r.call(nctx, "container_get", func(ctx context.Context) error {
		resp, err := c.containers.Get(ctx, &containersapi.GetContainerRequest{ID: k.ID})
		if err != nil {
			return err
		}
		if cc = resp.GetContainer(); cc == nil {
			return fmt.Errorf("container %s: empty answer: %w", k.ID, errdefs.ErrNotFound)
		}
		return nil
	})
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil // already deleted: the delete event follows
	}
	if err != nil {
		return err
	}
	r.mu.RLock()
	prev := r.inv[k]
	r.mu.RUnlock()
	e := r.describe(nctx, c, k.Namespace, cc, prev)
	if prev == nil {
		e.c.State = StateCreated
	}
	r.mu.Lock()
	r.inv[k] = e
	r.mu.Unlock()
	if prev == nil {
		cp := e.c.clone()
		r.emit(ctx, Event{Type: EventAdded, Time: at, Key: k, Container: &cp})
	}
	return nil
}

// onTask applies fn to container k's entry under the inventory lock and
// emits the event it returns (0: none). A container not yet known (its
// create event came before we listed) is read from containerd first.
func (r *Runtime) onTask(ctx context.Context, c *apiClient, k container.Key, at time.Time, fn func(*entry) (EventType, *Exit)) error {
	return r.onTaskOf(ctx, c, k, at, false, fn)
}

// onTaskOf is onTask, with the event marked Leftover when leftover is set.
func (r *Runtime) onTaskOf(ctx context.Context, c *apiClient, k container.Key, at time.Time, leftover bool, fn func(*entry) (EventType, *Exit)) error {
	r.mu.RLock()
	_, known := r.inv[k]
	r.mu.RUnlock()
	if !known {
		if err := r.onContainer(ctx, c, k, at, true); err != nil {
			return err
		}
	}
	r.mu.Lock()
	e, ok := r.inv[k]
	if !ok {
		r.mu.Unlock()
		return nil
	}
	t, exit := fn(e)
	var cp Container
	if t != 0 {
		cp = e.c.clone()
	}
	r.mu.Unlock()
	if t != 0 {
		r.emit(ctx, Event{Type: t, Time: at, Key: k, Container: &cp, Exit: exit, Leftover: leftover})
	}
	return nil
}

// listContainers lists the containers of ctx's namespace, streamed (one
// container a message, so that no answer grows with the number of
// containers), or in one answer from a containerd without the stream.
func listContainers(ctx context.Context, c *apiClient) ([]*containersapi.Container, error) {
	stream, err := c.containers.ListStream(ctx, &containersapi.ListContainersRequest{})
	if err != nil {
		return nil, err
	}
	var out []*containersapi.Container
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if status.Code(err) == codes.Unimplemented {
			resp, err := c.containers.List(ctx, &containersapi.ListContainersRequest{})
			if err != nil {
				return nil, err
			}
			return resp.Containers, nil
		}
		if err != nil {
			return nil, err
		}
		if msg.Container != nil {
			out = append(out, msg.Container)
		}
	}
}

// oomKilledInCgroup reports whether the kernel's OOM killer killed a
// process of the cgroup at rel (its oom_kill counter, v1
// memory.oom_control or v2 memory.events), for a SIGKILL exit whose
// TaskOOM event has not arrived: the shim sends the OOM event and the exit
// from separate goroutines, and on a loaded machine the exit comes first
// (TestExitClassification saw "signal KILL" for an OOM kill in CI). The
// cgroup is there until the task is deleted, after its exit. Any failure to
// read it answers false: the exit stays a kill by a signal.
func (r *Runtime) oomKilledInCgroup(rel string) bool {
	l, err := r.cgroupLayout()
	if err != nil {
		return false
	}
	p := cgroupFiles(l, rel)[fMemOOM]
	if p == "" {
		return false
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return false
	}
	return parseOOMKill(b) > 0
}
