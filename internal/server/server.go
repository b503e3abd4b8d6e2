// Package server owns flintlockd's API edge: the gRPC MicroVM service, the
// host capacity service and the power service (power operations, the
// state watch, consoles), their HTTP/JSON gateway, authentication,
// TLS, request metrics, and the conversion of internal errors to gRPC
// status codes. It stays thin: it applies defaults and validation, writes
// the record to the store and hands the uid to the reconciler through Queue.
package server

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"time"

	"github.com/containerd/errdefs"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	hostv1 "github.com/liquidmetal-go/liquidmetal/api/services/host/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	powerv1 "github.com/liquidmetal-go/liquidmetal/api/services/power/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

// DefaultMaxRecvBytes is the default limit on the size of one request.
const DefaultMaxRecvBytes = 4 << 20

// Queue receives the uids of VMs whose desired state changed.
type Queue interface {
	Enqueue(uid string)
}

// Config configures a Server.
type Config struct {
	// Store holds the VM records (required).
	Store *store.Store
	// Queue is told about every created or deleted VM (required).
	Queue Queue
	// Providers are the VMM provider names a spec may ask for.
	Providers []string
	// DefaultProvider is used when a spec names none.
	DefaultProvider string
	// Admit, when set, checks a valid spec (defaults applied) against
	// what this host can run, before it is stored: e.g. a feature its
	// provider lacks is errdefs.ErrFailedPrecondition.
	Admit func(spec *types.MicroVMSpec) error
	// Token enables authentication when set: every call must carry
	// "authorization: Basic base64(Token)".
	Token string
	// Registerer receives the RPC metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// MaxRecvBytes bounds one request message (gRPC) or body (HTTP);
	// larger requests get ResourceExhausted. 0 means DefaultMaxRecvBytes.
	MaxRecvBytes int
	// Capacity sets the host capacity the host service reports.
	Capacity CapacityConfig
	// StateDir is flintlockd's state folder, where the power service
	// finds the VMs' consoles (vm/<namespace>/<name>/<uid>/console.log);
	// consoles are not served when it is empty.
	StateDir string
}

// Server implements the v1alpha1 MicroVM service.
type Server struct {
	v1alpha1.UnimplementedMicroVMServer

	store           *store.Store
	queue           Queue
	providers       []string
	defaultProvider string
	admit           func(*types.MicroVMSpec) error
	log             *slog.Logger
	maxRecv         int
	host            *hostService
	power           *powerService
	powerGW         *powerGateway // set by Gateway; stopped by Close

	unary  []grpc.UnaryServerInterceptor
	stream []grpc.StreamServerInterceptor

	// entropy makes ULIDs monotonic within a millisecond; it is locked
	// because concurrent creates share it.
	entropy *ulid.LockedMonotonicReader
	now     func() time.Time
}

var _ v1alpha1.MicroVMServer = (*Server)(nil)

// New checks cfg and returns a Server. It registers the RPC metrics on
// cfg.Registerer.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Queue == nil {
		return nil, fmt.Errorf("server config needs a store and a queue: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.MaxRecvBytes < 0 {
		return nil, fmt.Errorf("max receive size %d is negative: %w", cfg.MaxRecvBytes, errdefs.ErrInvalidArgument)
	}
	if cfg.MaxRecvBytes == 0 {
		cfg.MaxRecvBytes = DefaultMaxRecvBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		store:           cfg.Store,
		queue:           cfg.Queue,
		providers:       cfg.Providers,
		defaultProvider: cfg.DefaultProvider,
		admit:           cfg.Admit,
		log:             cfg.Logger,
		maxRecv:         cfg.MaxRecvBytes,
		entropy:         &ulid.LockedMonotonicReader{MonotonicReader: ulid.Monotonic(rand.Reader, 0)},
		now:             time.Now,
	}
	if s.host, err = newHostService(s, cfg.Capacity); err != nil {
		return nil, err
	}
	s.power = &powerService{s: s, stateDir: cfg.StateDir, consolePoll: 200 * time.Millisecond}
	// Outermost first: metrics see every outcome, including refused
	// authentication and recovered panics.
	auth := newAuthenticator(cfg.Token)
	s.unary = []grpc.UnaryServerInterceptor{m.unary, auth.unary, s.recoverUnary}
	s.stream = []grpc.StreamServerInterceptor{m.stream, auth.stream, s.recoverStream}
	if cfg.Token == "" {
		s.log.Warn("API authentication is disabled")
	}
	return s, nil
}

// GRPCServer returns a gRPC server with the MicroVM, host, health and
// reflection services registered and the server's interceptors installed.
// creds may be nil for plaintext (see TLSConfig); opts are appended.
func (s *Server) GRPCServer(creds credentials.TransportCredentials, opts ...grpc.ServerOption) *grpc.Server {
	all := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.maxRecv),
		grpc.ChainUnaryInterceptor(s.unary...),
		grpc.ChainStreamInterceptor(s.stream...),
	}
	if creds != nil {
		all = append(all, grpc.Creds(creds))
	}
	gs := grpc.NewServer(append(all, opts...)...)
	v1alpha1.RegisterMicroVMServer(gs, s)
	hostv1.RegisterHostServiceServer(gs, s.host)
	powerv1.RegisterPowerServiceServer(gs, s.power)

	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(v1alpha1.MicroVM_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(hostv1.HostService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(powerv1.PowerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	return gs
}

// Close releases what Gateway set up (the power service's in-memory
// connection).
func (s *Server) Close() {
	if s.powerGW != nil {
		s.powerGW.close()
	}
}

// newUID returns a new ULID.
func (s *Server) newUID() (string, error) {
	id, err := ulid.New(ulid.Timestamp(s.now()), s.entropy)
	if err != nil {
		return "", fmt.Errorf("new ulid: %w", err)
	}
	return id.String(), nil
}
