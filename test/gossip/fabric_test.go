package gossip

import (
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
)

// The test's network: a bridge in a "switch" namespace; every agent's
// namespace has eth0 on it with an address of agentNet (a /24 that exists
// only inside these namespaces) and a host route to the aggregator's
// address, aggIP, which the aggregator's namespace holds on its own eth0
// on the same bridge (a /32 and a route back to agentNet). So an agent's
// path to the aggregator is one route that the test can remove, leaving
// its gossip with the other agents untouched.
const (
	agentNet = "10.251.78"
	aggIP    = "10.251.79.1"
)

// client is an HTTP client whose connections are dialed inside ns (the
// test itself stays in the host's namespace, where none of these
// addresses exist).
func client(ns *testenv.NetNS) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// get returns the body of url fetched with c, "" on any error.
func get(c *http.Client, url string) string {
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}

// startIn starts cmd with its network namespace ns: forked from an OS
// thread switched into ns. cmd's Stdout and Stderr must be files (no
// copying goroutines).
func startIn(ns *testenv.NetNS, cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}
