package aggregator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/remediation"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// Aggregator is the aggregator process: the agents' stream (AgentGateway)
// and the Vigil API on one gRPC listener, /metrics and the JSON API on an
// HTTP listener, and the liveness sweep of the fleet.
type Aggregator struct {
	cfg     Config
	log     *slog.Logger
	fleet   *Fleet
	gateway *Gateway
	api     *API
	boot    *BootstrapServer
	metrics *selfMetrics
	auth    *authorizer
	mux     *http.ServeMux
	// remediation and history are nil when Config.Store is.
	remediation *remediation.Engine
	history     *history
	// replicas is nil unless Config.Replicated.
	replicas *replicas
	peers    *peerClients

	grpcLis, httpLis net.Listener
	grpcServer       *grpc.Server
	httpServer       *http.Server
	ready            atomic.Bool
	stopping         chan struct{}
	closeOnce        sync.Once
	closed           atomic.Bool
	closeErr         error
}

// New validates cfg, registers the self-metrics and binds both listeners
// (so that GRPCAddr and HTTPAddr are known before Run, with port 0 too).
func New(cfg Config) (*Aggregator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Aggregator{cfg: cfg, log: cfg.Logger, fleet: NewFleet(), stopping: make(chan struct{})}
	m, err := newSelfMetrics(cfg.Registry, a.fleet)
	if err != nil {
		return nil, fmt.Errorf("register self-metrics: %w", err)
	}
	a.metrics = m
	if cfg.Insecure {
		m.insecure.Set(1)
	}
	a.auth = newAuthorizer(cfg.Insecure, cfg.AllowCommonNameNodes, cfg.APITokens, m.authRefused)
	if cfg.Replicated {
		advertise := cfg.AdvertiseAPI
		a.replicas = newReplicas(cfg.Store, cfg.AggregatorID, cfg.LeaseTTL, advertise, a.log.With("component", "replicas"), m)
		cctx, cancel := context.WithTimeout(context.Background(), cfg.LeaseTTL)
		err := a.replicas.checkID(cctx)
		cancel()
		if err != nil {
			return nil, err
		}
		if a.cfg.Leader == nil {
			a.cfg.Leader = a.replicas.leader
		}
	}
	leaderOf := a.cfg.Leader
	if leaderOf == nil {
		leaderOf = func() bool { return true }
	}
	m.leaderOf.Store(&leaderOf)
	if a.replicas != nil {
		a.peers = newPeerClients(a.replicas, cfg.PeerTLS, cfg.Insecure, cfg.PeerTimeout, m)
	}
	a.remediation, err = newRemediation(&a.cfg, a.fleet, a.peers)
	if err != nil {
		return nil, err
	}
	if cfg.Store != nil {
		a.history = newHistory(cfg.Store, a.log.With("component", "history"), cfg.HistoryPerNode, cfg.HistoryMaxAge, m.historyDrop)
		a.fleet.events.record = a.history.record
	}
	a.gateway = newGateway(&a.cfg, a.fleet, m, a.stopping)
	a.gateway.remediation = a.remediation
	a.gateway.holdCommands = cfg.HoldCommands
	if a.replicas != nil {
		a.gateway.replicas = a.replicas
		a.replicas.drop = a.gateway.dropStream
		a.replicas.moved = a.gateway.nodeMoved
		if a.history != nil {
			a.gateway.claimed = a.history.reload
		}
	}
	a.api = NewAPI(a.fleet, cfg.WatchBuffer, a.stopping)
	a.api.remediation = a.remediation
	a.api.peers = a.peers
	a.api.history = a.history
	a.api.maxWatchers = cfg.MaxWatchers
	a.api.watchers = m.watchers
	a.api.watchDropped = m.watchDropped
	if cfg.Bootstrap != nil {
		a.boot, err = newBootstrapServer(cfg.Bootstrap, cfg.Store, m, a.log.With("component", "bootstrap"))
		if err != nil {
			return nil, err
		}
	}

	opts := []grpc.ServerOption{
		grpc.ForceServerCodec(serverCodec{}),
		grpc.MaxRecvMsgSize(cfg.MaxMessageBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             cfg.KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    cfg.KeepaliveTime,
			Timeout: cfg.KeepaliveTimeout,
		}),
		grpc.ChainUnaryInterceptor(a.auth.unary),
		grpc.ChainStreamInterceptor(a.auth.stream),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(newHandshakeLogged(credentials.NewTLS(cfg.TLS), a.log, m.tlsRefused)))
	}
	a.grpcServer = grpc.NewServer(opts...)
	a.grpcServer.RegisterService(&gatewayServiceDesc, a.gateway)
	vigilv1.RegisterVigilServer(a.grpcServer, a.api)
	if a.boot != nil {
		vigilv1.RegisterBootstrapServer(a.grpcServer, a.boot)
	} else {
		vigilv1.RegisterBootstrapServer(a.grpcServer, noBootstrap{})
	}

	a.grpcLis, err = net.Listen("tcp", cfg.GRPCListen)
	if err != nil {
		return nil, fmt.Errorf("grpc listen %s: %v: %w", cfg.GRPCListen, err, errdefs.ErrUnavailable)
	}
	if a.replicas != nil && a.replicas.advertise == "" {
		a.replicas.advertise = a.grpcLis.Addr().String() // not a wildcard: Config.validate
	}
	a.httpLis, err = net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		a.grpcLis.Close()
		return nil, fmt.Errorf("http listen %s: %v: %w", cfg.HTTPListen, err, errdefs.ErrUnavailable)
	}
	if cfg.TLS != nil {
		httpTLS := cfg.TLS.Clone()
		httpTLS.NextProtos = []string{"http/1.1"}
		a.httpLis = newSniffListener(a.httpLis, httpTLS)
	}
	a.mux = a.routes()
	a.mountRemediation()
	a.httpServer = &http.Server{
		Handler:           a.mux,
		ReadHeaderTimeout: 10 * time.Second,
		// net/http's own complaints (a refused TLS handshake, a bad
		// request line) in the aggregator's log format, not Go's default.
		ErrorLog: slog.NewLogLogger(a.log.With("listener", "http").Handler(), slog.LevelWarn),
	}
	return a, nil
}

// noBootstrap answers the Bootstrap service when bootstrap is off.
type noBootstrap struct {
	vigilv1.UnimplementedBootstrapServer
}

func (noBootstrap) Bootstrap(context.Context, *vigilv1.BootstrapRequest) (*vigilv1.BootstrapResponse, error) {
	return nil, status.Error(codes.Unimplemented, "node bootstrap is off: the aggregator was started without --bootstrap-tokens-file and --ca-cert/--ca-key")
}

func (noBootstrap) Renew(context.Context, *vigilv1.RenewRequest) (*vigilv1.RenewResponse, error) {
	return nil, status.Error(codes.Unimplemented, "node bootstrap is off: renew certificates the way they were issued")
}

func (noBootstrap) ReleaseNode(context.Context, *vigilv1.ReleaseNodeRequest) (*vigilv1.ReleaseNodeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "node bootstrap is off: no node name is bound")
}

// Close releases the listeners New bound, for an Aggregator whose Run was
// never called or has returned (Run stops its servers itself; the store in
// Config is the caller's to close). It is safe to call more than once; it
// must not be called while Run runs (cancel Run's context instead).
func (a *Aggregator) Close() error {
	a.closeOnce.Do(func() {
		a.closed.Store(true)
		a.closeErr = errors.Join(ignoreClosed(a.grpcLis.Close()), ignoreClosed(a.httpLis.Close()))
	})
	return a.closeErr
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// GRPCAddr is the address the gRPC server listens on.
func (a *Aggregator) GRPCAddr() net.Addr { return a.grpcLis.Addr() }

// HTTPAddr is the address the HTTP server listens on.
func (a *Aggregator) HTTPAddr() net.Addr { return a.httpLis.Addr() }

// Gateway is the agents' stream server (SendCommand lives there).
func (a *Aggregator) Gateway() *Gateway { return a.gateway }

// Fleet is the fleet state.
func (a *Aggregator) Fleet() *Fleet { return a.fleet }

// Run serves until ctx is cancelled, then stops gracefully: readiness turns
// false, the HTTP server shuts down and gRPC stops gracefully, both bounded
// by ShutdownTimeout (after which connections are closed). It returns nil
// after a clean shutdown. Run must be called once.
func (a *Aggregator) Run(ctx context.Context) error {
	if a.closed.Load() {
		return fmt.Errorf("aggregator: Run after Close: %w", errdefs.ErrConflict)
	}
	errc := make(chan error, 2)
	go func() {
		if err := a.grpcServer.Serve(a.grpcLis); err != nil {
			errc <- fmt.Errorf("grpc server: %w", err)
		}
	}()
	go func() {
		if err := a.httpServer.Serve(a.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http server: %w", err)
		}
	}()
	// The sweep and the remediation engine's housekeeping run until the
	// servers have stopped.
	var background sync.WaitGroup
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	background.Add(1)
	go func() {
		defer background.Done()
		a.sweepLoop(sweepCtx)
	}()
	if a.remediation != nil {
		background.Add(1)
		go func() {
			defer background.Done()
			runRemediation(sweepCtx, a.remediation, a.log)
		}()
	}
	if a.history != nil {
		// Stopped with the sweep, after the servers: the last events are
		// written.
		background.Add(1)
		go func() {
			defer background.Done()
			a.history.run(sweepCtx)
		}()
	}
	if a.replicas != nil {
		background.Add(1)
		go func() {
			defer background.Done()
			a.replicas.run(sweepCtx)
		}()
	}
	a.ready.Store(true)
	a.log.Info("aggregator serving", "grpc", a.GRPCAddr().String(), "http", a.HTTPAddr().String(), "mtls", a.cfg.TLS != nil)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	a.ready.Store(false)
	a.log.Info("aggregator stopping")
	close(a.stopping) // ends agent and watch streams, so GracefulStop can finish

	shutCtx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	if err := a.httpServer.Shutdown(shutCtx); err != nil {
		a.httpServer.Close()
	}
	stopped := make(chan struct{})
	go func() {
		a.grpcServer.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-shutCtx.Done():
		a.log.Warn("graceful stop timed out; closing remaining streams")
		a.grpcServer.Stop()
		<-stopped
	}
	stopSweep()
	background.Wait()
	if a.peers != nil {
		a.peers.close()
	}
	return runErr
}

// sweepLoop marks silent nodes stale and forgets long-down ones.
func (a *Aggregator) sweepLoop(ctx context.Context) {
	every := min(max(min(a.cfg.StaleAfter, a.cfg.ForgetAfter)/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	conditions := &conditionAssessor{
		cfg:         a.cfg.Conditions,
		log:         a.log,
		suspectSelf: func(on bool) { a.metrics.suspectSelf.Set(boolGauge(on)) },
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, name := range a.fleet.sweep(now, a.cfg.StaleAfter, a.cfg.ForgetAfter) {
				a.log.Info("forgot node: down longer than forget-after", "node", name, "forget_after", a.cfg.ForgetAfter)
				// Its per-node self-metric series go with it.
				a.metrics.nodeForgotten(name)
			}
			conditions.assess(a.fleet, now)
		}
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
