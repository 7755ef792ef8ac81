package agent

import (
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/vigilhq/vigil/internal/container"
	"github.com/vigilhq/vigil/internal/runtime"
)

// TestStatsProtoCarriesEveryField: with every field of a runtime.Stats set
// to its own non-zero value, every field of the ResourceSample is set, and
// the numbers arrive unchanged (so a field added to one side and not
// converted fails here).
func TestStatsProtoCarriesEveryField(t *testing.T) {
	var s runtime.Stats
	s.Key = container.Key{Namespace: "ns", ID: "id"}
	s.Time = time.Unix(1700000000, 0)
	v := reflect.ValueOf(&s).Elem()
	want := map[uint64]bool{}
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		n := uint64(100 + i)
		switch f.Kind() {
		case reflect.Uint64:
			f.SetUint(n)
		case reflect.Float64:
			f.SetFloat(float64(n))
		default:
			continue
		}
		want[n] = true
	}
	m := statsProto(&s).ProtoReflect()
	fields := m.Descriptor().Fields()
	got := map[uint64]bool{}
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Name() == "fs_usage_bytes" {
			// Not from runtime.Stats: the fs-usage goroutine's last read,
			// set by the sampler (TestWritableLayerUsageInSamples).
			continue
		}
		if !m.Has(fd) {
			t.Errorf("ResourceSample.%s not set", fd.Name())
			continue
		}
		switch fd.Kind() {
		case protoreflect.Uint64Kind:
			got[m.Get(fd).Uint()] = true
		case protoreflect.DoubleKind:
			got[uint64(m.Get(fd).Float())] = true
		}
	}
	for n := range want {
		if !got[n] {
			t.Errorf("the Stats field set to %d reaches no ResourceSample field", n)
		}
	}
}
