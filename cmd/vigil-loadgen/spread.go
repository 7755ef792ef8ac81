package main

import (
	"fmt"
	"sync/atomic"

	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// spreadSchemes numbers registerSpread's resolver schemes: a resolver is
// registered process-wide, one per list of addresses.
var spreadSchemes atomic.Uint64

// registerSpread registers a resolver that gives each new gRPC channel (one
// per simulated node) the addresses rotated by one more than the channel
// before it, under pick_first: the nodes are spread evenly over the
// replicas, and a node whose replica fails tries the next address of its
// list, then the one after, as an agent given several addresses does. It
// returns the target to dial. Not safe to call concurrently with dials
// (resolver.Register's contract): call it before the load starts.
func registerSpread(addrs []string) string {
	b := &spreadBuilder{addrs: addrs, scheme: fmt.Sprintf("vigil-loadgen-spread-%d", spreadSchemes.Add(1))}
	resolver.Register(b)
	return b.scheme + ":///replicas"
}

type spreadBuilder struct {
	addrs  []string
	scheme string
	next   atomic.Uint64
}

func (b *spreadBuilder) Scheme() string { return b.scheme }

// Build is called when a channel first connects (gRPC channels start idle)
// and again after an idle timeout; each call takes the next rotation.
func (b *spreadBuilder) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	k := int(b.next.Add(1)-1) % len(b.addrs)
	st := resolver.State{ServiceConfig: pickFirst(cc)}
	for i := range b.addrs {
		st.Endpoints = append(st.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: b.addrs[(k+i)%len(b.addrs)]}}})
	}
	if err := cc.UpdateState(st); err != nil {
		return nil, fmt.Errorf("loadgen resolver: %w", err)
	}
	return spreadResolver{}, nil
}

// pickFirst keeps the rotated order (no shuffle): the first address is the
// node's own replica, the rest its failover order.
func pickFirst(cc resolver.ClientConn) *serviceconfig.ParseResult {
	return cc.ParseServiceConfig(`{"loadBalancingConfig":[{"pick_first":{}}]}`)
}

// spreadResolver has a fixed list: nothing to resolve again.
type spreadResolver struct{}

func (spreadResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (spreadResolver) Close()                                {}
