package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// defaultPort is the aggregator's gRPC port (its --grpc-listen default):
// --server without a port dials it, not gRPC's default of 443.
const defaultPort = "7400"

// defaultServer is the aggregator's default gRPC address.
const defaultServer = "127.0.0.1:" + defaultPort

// globalFlags are accepted before and after the command.
type globalFlags struct {
	server        string
	tls           pki.Files
	tlsServerName string
	insecure      bool
	output        string
	timeout       time.Duration
}

// invocation is a parsed command line.
type invocation struct {
	global  globalFlags
	command string
	// filters of containers and events
	node, namespace, pod string
	unhealthy, all       bool
	// nodes release NAME
	release string
	// action commands: the target as typed and as sent, the operator's
	// reason, a dry run, the signal of kill (0: the default), whether to
	// wait for the agent's result; remediations: how many
	target      string
	targetProto *vigilv1.Target
	reason      string
	signal      uint32
	dryRun      bool
	wait        bool
	limit       int
	// events --since
	since time.Duration
}

// commandDoc documents one command, or the action commands together.
type commandDoc struct {
	// names are the commands it documents.
	names []string
	// synopses follow "vigilctl [flags] ".
	synopses []string
	// about says what it does, in lines of at most 70 characters.
	about string
}

// commandDocs are vigilctl's commands in the order the usage lists them:
// the one list that the usage, each command's --help and the errors
// naming the commands are made from.
var commandDocs = []commandDoc{
	{names: []string{"nodes"}, synopses: []string{"nodes", "nodes release NAME"}, about: `nodes lists the nodes the aggregator knows. nodes release NAME lets
another machine bootstrap as node NAME (operators only).`},
	{names: []string{"containers"}, synopses: []string{"containers [--node N] [--namespace NS] [--pod P] [--unhealthy] [--all]"},
		about: `List containers (pod sandboxes only with --all).`},
	{names: []string{"events"}, synopses: []string{"events [--node N] [--namespace NS] [--since DURATION]"},
		about: `Print container events as they happen, until interrupted; --since 1h
first prints the last hour's from the aggregator's history. Dropped for
reading too slowly, it watches again from the aggregator's history (a
warning on stderr) and prints each event once.`},
	{names: []string{"remediations"}, synopses: []string{"remediations [--node N] [--limit N]"},
		about: `List what was decided and done, newest first.`},
	{names: []string{"restart", "stop", "start", "kill", "link-up"},
		synopses: []string{"restart|stop|start|kill|link-up TARGET --reason R [--dry-run] [--wait] [--signal SIG]"},
		about: `Ask for an action (operators only), through the same journal, budgets
and fences as alerts; prints the decision, and with --wait the agent's
result. TARGET is NODE/NAMESPACE/CONTAINER_ID or
NODE/POD_NAMESPACE/POD/CONTAINER, with %INTERFACE for link-up
(NODE%INTERFACE: a host link). stop is for good: the container stays
stopped (restart policies included) until start. --signal is for kill.
The exit status says whether it was done (below); when it was not, the
reason is on stderr, whatever the output format.`},
	{names: []string{"version"}, synopses: []string{"version"}, about: `Print vigilctl's version (also --version).`},
}

// commandNames lists every command, for the errors that name them.
func commandNames() []string {
	var names []string
	for _, d := range commandDocs {
		names = append(names, d.names...)
	}
	return names
}

// commandList is "nodes, containers, ... or version".
func commandList() string {
	names := commandNames()
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func docOf(command string) (commandDoc, bool) {
	for _, d := range commandDocs {
		for _, n := range d.names {
			if n == command {
				return d, true
			}
		}
	}
	return commandDoc{}, false
}

// topUsage is vigilctl --help: every command, the global flags with the
// defaults of g, the exit statuses.
func topUsage(g globalFlags) string {
	var b strings.Builder
	b.WriteString("vigilctl: operate a Vigil fleet through the aggregator's API.\n\nUsage:\n")
	for _, d := range commandDocs {
		for _, s := range d.synopses {
			fmt.Fprintf(&b, "  vigilctl [flags] %s\n", s)
		}
	}
	b.WriteString("\nCommands (each with --help for its own flags):\n")
	for _, d := range commandDocs {
		fmt.Fprintf(&b, "  %s\n%s", strings.Join(d.names, ", "), indent(d.about, "      "))
	}
	b.WriteString("\nFlags (also accepted after the command):\n")
	fs := newFlagSet("vigilctl")
	g.register(fs)
	registerVersion(fs, new(bool))
	b.WriteString(flagDefaults(fs))
	b.WriteString("\n" + exitStatusHelp)
	return b.String()
}

// commandUsage is vigilctl COMMAND --help: its synopsis, what it does, its
// flags, the global flags with the defaults of g; the exit statuses for
// the actions.
func commandUsage(command string, g globalFlags) string {
	d, _ := docOf(command)
	var b strings.Builder
	b.WriteString("Usage:\n")
	for _, s := range d.synopses {
		if len(d.names) > 1 { // the action commands: this one's
			s = strings.Replace(s, strings.Join(d.names, "|"), command, 1)
			if command != "kill" {
				s = strings.Replace(s, " [--signal SIG]", "", 1)
			}
		}
		fmt.Fprintf(&b, "  vigilctl [flags] %s\n", s)
	}
	b.WriteString("\n" + indent(d.about, "  "))
	own := newFlagSet("vigilctl " + command)
	(&invocation{command: command}).registerCommand(own)
	if f := flagDefaults(own); f != "" {
		b.WriteString("\nFlags:\n" + f)
	}
	global := newFlagSet("vigilctl")
	g.register(global)
	registerVersion(global, new(bool))
	b.WriteString("\nGlobal flags:\n" + flagDefaults(global))
	if _, ok := actionCommands[command]; ok {
		b.WriteString("\n" + exitStatusHelp)
	}
	return b.String()
}

func indent(text, prefix string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		b.WriteString(prefix + line + "\n")
	}
	return b.String()
}

func flagDefaults(fs *flag.FlagSet) string {
	var b strings.Builder
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	return b.String()
}

// newFlagSet is a flag set that prints nothing: parseArgs returns its
// errors, and run prints them once, with the usage.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

func (g *globalFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.server, "server", g.server, "aggregator gRPC address, HOST[:PORT]; without a port, the aggregator's gRPC port "+defaultPort+" (env VIGIL_SERVER)")
	fs.StringVar(&g.tls.Cert, "tls-cert", g.tls.Cert, "client certificate for mutual TLS (env VIGIL_TLS_CERT)")
	fs.StringVar(&g.tls.Key, "tls-key", g.tls.Key, "client private key (env VIGIL_TLS_KEY)")
	fs.StringVar(&g.tls.CA, "tls-ca", g.tls.CA, "CA bundle that signs the aggregator's certificate (env VIGIL_TLS_CA)")
	fs.StringVar(&g.tlsServerName, "tls-server-name", g.tlsServerName, "name to verify in the aggregator's certificate (default: the host of --server)")
	fs.BoolVar(&g.insecure, "insecure", g.insecure, "connect without TLS (demo aggregators started with --insecure; env VIGIL_INSECURE=true)")
	fs.StringVar(&g.output, "o", g.output, "output format: table, wide or json")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "deadline of each request (not of events), and how long --wait waits")
}

func registerVersion(fs *flag.FlagSet, v *bool) {
	fs.BoolVar(v, "version", false, "print vigilctl's version and exit")
}

// registerCommand registers the flags of inv.command.
func (inv *invocation) registerCommand(fs *flag.FlagSet) {
	switch inv.command {
	case "containers":
		fs.StringVar(&inv.node, "node", "", "only containers of this node")
		fs.StringVar(&inv.namespace, "namespace", "", "only containers of this containerd namespace")
		fs.StringVar(&inv.pod, "pod", "", "only containers of pods with this name")
		fs.BoolVar(&inv.unhealthy, "unhealthy", false, "only containers whose health check fails, that crash-loop, or whose restart policy gave up")
		fs.BoolVar(&inv.all, "all", false, "include pod sandbox containers")
	case "events":
		fs.StringVar(&inv.node, "node", "", "only events of this node")
		fs.StringVar(&inv.namespace, "namespace", "", "only events of this containerd namespace")
		fs.DurationVar(&inv.since, "since", 0, "first print the events of this long ago to now from the aggregator's history (e.g. 1h), then follow")
	case "remediations":
		fs.StringVar(&inv.node, "node", "", "only remediations of this node")
		fs.IntVar(&inv.limit, "limit", 0, "at most this many (default: the aggregator's, 100)")
	}
	if _, ok := actionCommands[inv.command]; ok {
		fs.StringVar(&inv.reason, "reason", "", "why (journaled with the action; required)")
		fs.BoolVar(&inv.dryRun, "dry-run", false, "decide and journal, do not act")
		fs.BoolVar(&inv.wait, "wait", false, "wait for the agent's result, at most --timeout: exit 0 only once it is carried out")
		if inv.command == "kill" {
			fs.Func("signal", "signal to send (name or number; default SIGKILL)", func(s string) error {
				sig, err := parseSignal(s)
				inv.signal = sig
				return err
			})
		}
	}
}

// parseArgs parses a command line. Its errors are a *usageError
// (errdefs.ErrInvalid), or a *helpRequest (flag.ErrHelp) for -h and --help,
// whatever the command. It sends nothing and prints nothing.
func parseArgs(args []string, getenv func(string) string) (*invocation, error) {
	inv := &invocation{global: globalFlags{
		server: defaultServer, output: "table", timeout: 10 * time.Second,
		tls: pki.Files{Cert: getenv("VIGIL_TLS_CERT"), Key: getenv("VIGIL_TLS_KEY"), CA: getenv("VIGIL_TLS_CA")},
	}}
	if s := getenv("VIGIL_SERVER"); s != "" {
		inv.global.server = s
	}
	if s := getenv("VIGIL_INSECURE"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, usagef("VIGIL_INSECURE=%q: want true or false", s)
		}
		inv.global.insecure = b
	}
	defaults := inv.global // what --help shows

	top := newFlagSet("vigilctl")
	inv.global.register(top)
	var version bool
	registerVersion(top, &version)
	if err := top.Parse(args); err != nil {
		return nil, flagError(err, topUsage(defaults))
	}
	if version {
		inv.command = "version"
		return inv, nil
	}
	if top.NArg() == 0 {
		return nil, &usageError{msg: "no command given: want " + commandList(), usage: topUsage(defaults)}
	}
	inv.command = top.Arg(0)
	if _, ok := docOf(inv.command); !ok {
		return nil, &usageError{msg: fmt.Sprintf("unknown command %q: want %s", inv.command, commandList()), usage: topUsage(defaults)}
	}
	usage := commandUsage(inv.command, defaults)
	fs := newFlagSet("vigilctl " + inv.command)
	inv.global.register(fs)
	registerVersion(fs, &version)
	inv.registerCommand(fs)
	args, err := parseInterspersed(fs, top.Args()[1:])
	if err != nil {
		return nil, flagError(err, usage)
	}
	if version {
		inv.command = "version"
		return inv, nil
	}
	unexpected := func(args []string) error {
		return &usageError{msg: fmt.Sprintf("%s: unexpected arguments %q", inv.command, args), usage: usage}
	}
	_, action := actionCommands[inv.command]
	switch {
	case inv.command == "nodes" && len(args) > 0 && args[0] == "release":
		if len(args) != 2 || args[1] == "" {
			return nil, &usageError{msg: fmt.Sprintf("nodes release: want one node name, got %q", args[1:]), usage: usage}
		}
		inv.release = args[1]
	case action:
		if len(args) == 0 {
			return nil, &usageError{msg: inv.command + ": no target: want NODE/NAMESPACE/CONTAINER_ID or NODE/POD_NAMESPACE/POD/CONTAINER", usage: usage}
		}
		if len(args) > 1 {
			return nil, unexpected(args[1:])
		}
		inv.target = args[0]
		if inv.targetProto, err = parseTarget(inv.target, actionCommands[inv.command]); err != nil {
			return nil, err
		}
		if strings.TrimSpace(inv.reason) == "" {
			return nil, usagef("%s: --reason is required: it is journaled with the action", inv.command)
		}
	case len(args) > 0:
		return nil, unexpected(args)
	}
	if inv.command == "version" {
		return inv, nil // it contacts nothing
	}
	if inv.since < 0 {
		return nil, usagef("--since %s: want a positive duration", inv.since)
	}
	if inv.limit < 0 {
		return nil, usagef("--limit %d: want 0 or more", inv.limit)
	}

	g := &inv.global
	switch g.output {
	case "table", "wide", "json":
	default:
		return nil, usagef("-o %q: want table, wide or json", g.output)
	}
	if g.server, err = serverAddress(g.server); err != nil {
		return nil, err
	}
	if g.timeout <= 0 {
		return nil, usagef("--timeout %s: want a positive duration", g.timeout)
	}
	anyTLS := g.tls.Cert != "" || g.tls.Key != "" || g.tls.CA != ""
	switch {
	case anyTLS && g.insecure:
		return nil, usagef("--insecure and --tls-* are both given: choose one")
	case !anyTLS && !g.insecure:
		return nil, usagef("no transport security: give --tls-cert, --tls-key and --tls-ca (the aggregator's mutual TLS), or --insecure for a demo aggregator")
	}
	return inv, nil
}

// parseInterspersed parses fs's flags wherever they stand among args and
// returns the other arguments. An argument that starts with "-" is a flag
// or an error, never an argument ("--" does not make it one): no node,
// target or command does, and one that is a mistyped flag must not be
// sent as a name.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return rest, nil
		}
		if strings.HasPrefix(args[0], "-") {
			return nil, fmt.Errorf("%q is not a flag of %s, and no argument starts with \"-\"", args[0], fs.Name())
		}
		rest, args = append(rest, args[0]), args[1:]
	}
}

// flagError is a flag set's error, printed with usage; -h and --help are a
// helpRequest.
func flagError(err error, usage string) error {
	if errors.Is(err, flag.ErrHelp) {
		return &helpRequest{usage: usage}
	}
	return &usageError{msg: err.Error(), usage: usage}
}

// grpcSchemes are the gRPC target schemes --server may name.
var grpcSchemes = []string{"dns:", "unix:", "unix-abstract:", "passthrough:"}

// serverAddress is --server as vigilctl dials it: HOST:PORT, with the
// aggregator's gRPC port (defaultPort) when none is given, as the docs
// promise, rather than gRPC's default of 443. A gRPC target with a scheme
// is left alone but for the port of a dns: target's host (dns:///agg is
// dns:///agg:7400).
func serverAddress(s string) (string, error) {
	if s == "" {
		return "", usagef("--server is empty")
	}
	for _, scheme := range grpcSchemes {
		if !strings.HasPrefix(s, scheme) {
			continue
		}
		if scheme != "dns:" {
			return s, nil
		}
		rest := strings.TrimPrefix(s, scheme)
		i := strings.LastIndex(rest, "/")
		hp, err := hostPort(rest[i+1:])
		if err != nil {
			return "", usagef("--server %q: %v", s, err)
		}
		return scheme + rest[:i+1] + hp, nil
	}
	hp, err := hostPort(s)
	if err != nil {
		return "", usagef("--server %q: %v", s, err)
	}
	for _, scheme := range grpcSchemes {
		if strings.HasPrefix(hp, scheme) { // a host named like a scheme
			return "dns:///" + hp, nil
		}
	}
	return hp, nil
}

// hostPort is s as HOST:PORT, with defaultPort when s has no port.
func hostPort(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port: a name, an IPv4 address, or an IPv6 one, bare or in
		// brackets.
		host, port = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), ""
		if strings.Contains(host, ":") && net.ParseIP(host) == nil {
			return "", fmt.Errorf("want HOST or HOST:PORT: %v", err)
		}
	}
	if host == "" {
		return "", errors.New("no host: want HOST or HOST:PORT")
	}
	if strings.ContainsAny(host, "/[]@?# \t") {
		return "", fmt.Errorf("host %q: want a name or an IP address", host)
	}
	if port == "" {
		port = defaultPort
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("port %q: want a number from 1 to 65535", port)
	}
	return net.JoinHostPort(host, port), nil
}
