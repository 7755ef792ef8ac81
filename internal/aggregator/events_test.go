package aggregator

import (
	"fmt"
	"testing"

	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// A slow subscriber is dropped once its buffer is full, told once with the
// change that did not fit; publishing never blocks and other subscribers
// keep receiving.
func TestBroadcasterDropsSlowSubscriber(t *testing.T) {
	b := newBroadcaster()
	var lost []*vigilv1.WatchEventsResponse
	slow := b.subscribe("", "", 2, func(m *vigilv1.WatchEventsResponse) { lost = append(lost, m) })
	fail := func(*vigilv1.WatchEventsResponse) { t.Error("a subscriber with room was dropped") }
	fast := b.subscribe("n1", "", 10, fail)
	other := b.subscribe("n2", "", 10, fail)
	for i := range 3 {
		b.publish("n1", &vigilv1.ContainerEvent{Container: &vigilv1.Container{Id: "c", Namespace: "default"}, Message: fmt.Sprint(i)})
	}
	if len(lost) != 1 || lost[0].GetEvent().GetMessage() != "2" {
		t.Fatalf("slow subscriber told %v, want once, with the third event", lost)
	}
	if len(fast.ch) != 3 {
		t.Fatalf("fast subscriber got %d events, want 3", len(fast.ch))
	}
	if len(other.ch) != 0 {
		t.Fatalf("subscriber filtered on n2 got %d events of n1", len(other.ch))
	}
	b.publish("n1", &vigilv1.ContainerEvent{}) // the dropped subscriber is gone: not told again
	if len(lost) != 1 {
		t.Fatalf("dropped subscriber told %d times", len(lost))
	}
	b.unsubscribe(slow)
	b.unsubscribe(fast)
	b.unsubscribe(other)
	if len(b.subs) != 0 {
		t.Fatalf("%d subscribers left", len(b.subs))
	}
}
