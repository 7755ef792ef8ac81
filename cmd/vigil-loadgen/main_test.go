package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--insecure", "--nodes", "20", "--containers", "10"}, &bytes.Buffer{})
	if err != nil || o.cfg.Nodes != 20 || o.cfg.Containers != 10 {
		t.Fatalf("got %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"--insecure", "--aggregator", "127.0.0.1:7400, 127.0.0.1:7410,127.0.0.1:7420"}, &bytes.Buffer{})
	if err != nil || len(o.addrs) != 3 || o.addrs[1] != "127.0.0.1:7410" {
		t.Fatalf("three replicas: got %q, %v", o.addrs, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "exactly one of --insecure and --tls-dir"},
		{[]string{"--insecure", "--tls-dir", "/tmp/x"}, "exactly one of"},
		{[]string{"--insecure", "--nodes", "0"}, "--nodes must be at least 1"},
		{[]string{"--insecure", "--target", "nohost"}, `--aggregator "nohost"`},
		{[]string{"--insecure", "--aggregator", "127.0.0.1:1,nohost"}, `--aggregator "nohost"`},
	} {
		_, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("parseFlags(%q) = %v, want ErrInvalid saying %q", tc.args, err, tc.want)
		}
	}
}
