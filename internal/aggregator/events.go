package aggregator

import (
	"sync"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// broadcaster fans container events out to WatchEvents subscribers. Each
// subscriber has a bounded buffer; publishing never blocks: a subscriber
// whose buffer is full is removed and told once (its onDrop), and its
// stream ends with ResourceExhausted.
type broadcaster struct {
	mu   sync.Mutex
	subs map[*subscriber]struct{}
	// record, when set, also gets every event (the durable history); it
	// must not block. Set before the first publish.
	record func(*vigilv1.WatchEventsResponse)
}

type subscriber struct {
	node, namespace string
	ch              chan *vigilv1.WatchEventsResponse
	// onDrop is called once, under the broadcaster's lock, with the first
	// change that did not fit; it must not block.
	onDrop func(lost *vigilv1.WatchEventsResponse)
}

func newBroadcaster() *broadcaster {
	return &broadcaster{subs: make(map[*subscriber]struct{})}
}

// subscribe registers a subscriber with a buffer of size events; onDrop
// (not nil) is told when the subscriber is dropped for falling behind.
// Call unsubscribe when done.
func (b *broadcaster) subscribe(node, namespace string, size int, onDrop func(lost *vigilv1.WatchEventsResponse)) *subscriber {
	s := &subscriber{
		node:      node,
		namespace: namespace,
		ch:        make(chan *vigilv1.WatchEventsResponse, size),
		onDrop:    onDrop,
	}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// unsubscribe removes s; safe to call after s was dropped.
func (b *broadcaster) unsubscribe(s *subscriber) {
	b.mu.Lock()
	delete(b.subs, s)
	b.mu.Unlock()
}

// publish offers a container's event to every matching subscriber without
// blocking.
func (b *broadcaster) publish(node string, e *vigilv1.ContainerEvent) {
	b.publishMsg(&vigilv1.WatchEventsResponse{Node: node, Event: e})
}

// eventNamespace is the containerd namespace a change concerns, "" for a
// node's (which only watchers without a namespace filter get).
func eventNamespace(m *vigilv1.WatchEventsResponse) string {
	switch {
	case m.GetEvent() != nil:
		return m.GetEvent().GetContainer().GetNamespace()
	case m.GetRemediation() != nil:
		return m.GetRemediation().GetTarget().GetNamespace()
	}
	return ""
}

// publishMsg offers any change (a container's event, a node's, a
// remediation's) to every matching subscriber without blocking, and to the
// history.
func (b *broadcaster) publishMsg(msg *vigilv1.WatchEventsResponse) {
	if b.record != nil {
		b.record(msg)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.subs) == 0 {
		return
	}
	ns := eventNamespace(msg)
	for s := range b.subs {
		if (s.node != "" && s.node != msg.GetNode()) || (s.namespace != "" && s.namespace != ns) {
			continue
		}
		select {
		case s.ch <- msg:
		default:
			delete(b.subs, s)
			s.onDrop(msg)
		}
	}
}
