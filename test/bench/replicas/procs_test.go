package replicasbench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
)

// proc is a child process of the benchmark: its output goes to a log file
// that is shown when the test fails; it is killed when the test ends.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProc(t testing.TB, dir, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s log (last 30 lines):\n%s", name, tailFile(p.log, 30))
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to be gone. Safe to call
// twice.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// cpu is the process's user+system CPU time so far.
func cpuOf(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (which may hold spaces).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// rssOf is the process's VmRSS in bytes.
func rssOf(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// pidsWithArg finds the processes whose command line holds arg (the etcd
// members of a cluster, by their client URL).
func pidsWithArg(arg string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if a == arg {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// freeAddrs returns n loopback addresses with free ports.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs
}

// build builds one of Vigil's commands as released (the Makefile's flags).
func build(t testing.TB, name, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	testenv.BuildRelease(t, pkg, bin)
	return bin
}

// writeReport logs a benchmark's results and, with -report, appends them to
// that file.
func writeReport(t testing.TB, text string) {
	t.Helper()
	t.Log(text)
	if *reportFlag == "" {
		return
	}
	f, err := os.OpenFile(*reportFlag, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// scrape is one GET of an aggregator's /metrics (a shard of it when shards
// is above 0), read to the end as Prometheus does.
type scrape struct {
	took   time.Duration
	bytes  int64
	series int
	// up is vigil_node_up by node.
	up map[string]float64
	// self holds the aggregator's own series (vigil_aggregator_*), by
	// their whole name with labels.
	self map[string]float64
}

var scrapeClient = &http.Client{Timeout: 5 * time.Minute}

func scrapeMetrics(httpAddr string, shard, shards int) (scrape, error) {
	url := "http://" + httpAddr + "/metrics"
	if shards > 0 {
		url += fmt.Sprintf("?shard=%d&shards=%d", shard, shards)
	}
	s := scrape{up: map[string]float64{}, self: map[string]float64{}}
	start := time.Now()
	resp, err := scrapeClient.Get(url)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return s, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	cr := &countReader{r: resp.Body}
	sc := bufio.NewScanner(cr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		s.series++
		switch {
		case bytes.HasPrefix(line, []byte(`vigil_node_up{node="`)):
			rest := line[len(`vigil_node_up{node="`):]
			i := bytes.IndexByte(rest, '"')
			v, _ := strconv.ParseFloat(string(line[bytes.LastIndexByte(line, ' ')+1:]), 64)
			s.up[string(rest[:i])] = v
		case bytes.HasPrefix(line, []byte("vigil_aggregator_")):
			sp := bytes.LastIndexByte(line, ' ')
			v, _ := strconv.ParseFloat(string(line[sp+1:]), 64)
			s.self[string(line[:sp])] = v
		}
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	s.took, s.bytes = time.Since(start), cr.n
	return s, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// sumSelf adds the aggregator's own series of one name (all label sets).
func sumSelf(self map[string]float64, name string) float64 {
	var v float64
	for k, x := range self {
		if k == name || strings.HasPrefix(k, name+"{") {
			v += x
		}
	}
	return v
}
