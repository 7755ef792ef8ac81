package aggregator

import (
	"testing"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// A slow subscriber is dropped once its buffer is full; publishing never
// blocks and other subscribers keep receiving.
func TestBroadcasterDropsSlowSubscriber(t *testing.T) {
	b := newBroadcaster()
	slow := b.subscribe("", "", 2)
	fast := b.subscribe("n1", "", 10)
	other := b.subscribe("n2", "", 10)
	ev := &vigilv1.ContainerEvent{Container: &vigilv1.Container{Id: "c", Namespace: "default"}}
	for range 3 {
		b.publish("n1", ev)
	}
	select {
	case <-slow.dropped:
	default:
		t.Fatal("slow subscriber not dropped after overflowing its buffer of 2")
	}
	if len(fast.ch) != 3 {
		t.Fatalf("fast subscriber got %d events, want 3", len(fast.ch))
	}
	if len(other.ch) != 0 {
		t.Fatalf("subscriber filtered on n2 got %d events of n1", len(other.ch))
	}
	b.publish("n1", ev) // the dropped subscriber is gone: no panic on a closed channel
	b.unsubscribe(slow)
	b.unsubscribe(fast)
	b.unsubscribe(other)
	if len(b.subs) != 0 {
		t.Fatalf("%d subscribers left", len(b.subs))
	}
}
