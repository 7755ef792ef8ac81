package aggregator

import (
	"log/slog"
	"testing"
)

// TestEveryMethodHasARole: every method the aggregator's gRPC server
// serves is in the role table, so that none is refused by accident or
// slips through a new service unchecked (a method outside the table is
// refused).
func TestEveryMethodHasARole(t *testing.T) {
	a, err := New(Config{GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Insecure: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.grpcLis.Close()
	defer a.httpLis.Close()
	n := 0
	for svc, info := range a.grpcServer.GetServiceInfo() {
		for _, m := range info.Methods {
			name := "/" + svc + "/" + m.Name
			if _, ok := methodRoles[name]; !ok {
				t.Errorf("%s is served but has no role in methodRoles", name)
			}
			n++
		}
	}
	if n != len(methodRoles) {
		t.Errorf("%d methods served, %d in the role table", n, len(methodRoles))
	}
}
