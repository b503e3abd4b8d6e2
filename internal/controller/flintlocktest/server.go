// Package flintlocktest is a TEST DOUBLE of flintlockd for CAPMVM's
// controller tests and benchmarks: an in-process gRPC server implementing
// the flintlock v1alpha1 MicroVM service and the host capacity service,
// whose microVM states the test sets (SetState, Remove) instead of a
// reconciler running VMMs. It keeps the behaviour clients rely on (server
// assigned ULIDs, AlreadyExists for a taken namespace/name, NotFound with
// "not found", asynchronous delete through DELETING, the basic-auth token
// check, TLS) and counts calls and accepted connections. It is not
// flintlockd: the real daemon is tested against CAPMVM by the integration
// tests.
package flintlocktest

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	hostv1 "github.com/liquidmetal-go/liquidmetal/api/services/host/v1alpha1"
	microvmv1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/server"
)

// Options configures a Server.
type Options struct {
	// Addr is the listen address; 127.0.0.1:0 when empty.
	Addr string
	// Token, when set, is required on every call as
	// "authorization: Basic base64(Token)" (scheme word in any case).
	Token string
	// TLS, when set, serves TLS with this configuration (set ClientAuth for
	// mutual TLS).
	TLS *tls.Config
	// InitialState is the state of a new microVM (PENDING by default).
	InitialState types.MicroVMStatus_MicroVMState
	// RemoveOnDelete removes a microVM at once on DeleteMicroVM instead of
	// leaving it DELETING until Remove.
	RemoveOnDelete bool
	// TotalVCPU and TotalMemoryMiB are the capacity GetCapacity reports;
	// 64 vCPUs and 256 GiB when zero.
	TotalVCPU, TotalMemoryMiB uint32
	// CreateDelay delays every CreateMicroVM before it is stored.
	CreateDelay time.Duration
}

// Server is the test double. Its methods are safe for concurrent use.
type Server struct {
	microvmv1.UnimplementedMicroVMServer
	hostv1.UnimplementedHostServiceServer

	opts Options
	addr string

	mu       sync.Mutex
	grpc     *grpc.Server
	vms      map[string]*types.MicroVM // by uid
	calls    map[string]int            // by method name
	refused  int
	createFn func(*types.MicroVMSpec) error

	conns atomic.Int64
}

// Start listens on opts.Addr and serves until Close.
func Start(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.TotalVCPU == 0 {
		opts.TotalVCPU = 64
	}
	if opts.TotalMemoryMiB == 0 {
		opts.TotalMemoryMiB = 256 << 10
	}
	s := &Server{
		opts:  opts,
		vms:   map[string]*types.MicroVM{},
		calls: map[string]int{},
	}
	if err := s.serve(opts.Addr); err != nil {
		return nil, err
	}
	return s, nil
}

// serve starts a gRPC server on addr; the VMs survive Stop and Restart.
func (s *Server) serve(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("flintlocktest: listen %s: %w", addr, err)
	}
	var opts []grpc.ServerOption
	if s.opts.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.opts.TLS)))
	}
	opts = append(opts, grpc.UnaryInterceptor(s.auth))
	gs := grpc.NewServer(opts...)
	microvmv1.RegisterMicroVMServer(gs, s)
	hostv1.RegisterHostServiceServer(gs, s)
	s.mu.Lock()
	s.grpc = gs
	s.addr = lis.Addr().String()
	s.mu.Unlock()
	go func() { _ = gs.Serve(&countingListener{Listener: lis, n: &s.conns}) }()
	return nil
}

// Addr is the host:port the server listens on (also after Stop).
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Stop closes the listener and every connection: the host is unreachable
// until Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	gs := s.grpc
	s.grpc = nil
	s.mu.Unlock()
	if gs != nil {
		gs.Stop()
	}
}

// Restart serves again on the same address, with the same microVMs.
func (s *Server) Restart() error {
	return s.serve(s.Addr())
}

// Close stops the server for good.
func (s *Server) Close() { s.Stop() }

// Connections is the number of TCP connections the server accepted.
func (s *Server) Connections() int { return int(s.conns.Load()) }

// Calls is the number of calls of a method ("CreateMicroVM", "GetMicroVM",
// ...) that passed authentication.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// OnCreate sets a function called with every create request's spec before
// it is stored; an error it returns is the call's error.
func (s *Server) OnCreate(fn func(*types.MicroVMSpec) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.createFn = fn
}

// VMs returns copies of the stored microVMs, sorted by namespace and name.
func (s *Server) VMs() []*types.MicroVM {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*types.MicroVM, 0, len(s.vms))
	for _, vm := range s.vms {
		out = append(out, proto.CloneOf(vm))
	}
	slices.SortFunc(out, func(a, b *types.MicroVM) int {
		return strings.Compare(a.Spec.Namespace+"/"+a.Spec.Id, b.Spec.Namespace+"/"+b.Spec.Id)
	})
	return out
}

// VM returns a copy of the microVM namespace/name, or nil.
func (s *Server) VM(namespace, name string) *types.MicroVM {
	s.mu.Lock()
	defer s.mu.Unlock()
	if vm := s.byName(namespace, name); vm != nil {
		return proto.CloneOf(vm)
	}
	return nil
}

// SetState sets a microVM's state and failure reason and message.
func (s *Server) SetState(uid string, state types.MicroVMStatus_MicroVMState, reason, message string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, ok := s.vms[uid]
	if !ok {
		return fmt.Errorf("flintlocktest: no microvm %s", uid)
	}
	vm.Status.State = state
	vm.Status.FailureReason = reason
	vm.Status.FailureMessage = message
	vm.Version++
	return nil
}

// SetDetailedState sets a microVM's detailed_state (RUNNING or STOPPED of
// a CREATED microVM, on hosts with the power service).
func (s *Server) SetDetailedState(uid string, state types.MicroVMStatus_MicroVMState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, ok := s.vms[uid]
	if !ok {
		return fmt.Errorf("flintlocktest: no microvm %s", uid)
	}
	vm.Status.DetailedState = state
	vm.Version++
	return nil
}

// Remove drops a microVM, as flintlockd does once a delete has finished.
func (s *Server) Remove(uid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.vms, uid)
}

func (s *Server) byName(namespace, name string) *types.MicroVM {
	for _, vm := range s.vms {
		if vm.Spec.Namespace == namespace && vm.Spec.Id == name {
			return vm
		}
	}
	return nil
}

// CreateMicroVM stores the microVM under a new ULID in InitialState.
func (s *Server) CreateMicroVM(_ context.Context, req *microvmv1.CreateMicroVMRequest) (*microvmv1.CreateMicroVMResponse, error) {
	if s.opts.CreateDelay > 0 {
		time.Sleep(s.opts.CreateDelay)
	}
	spec := proto.CloneOf(req.GetMicrovm())
	if spec == nil || spec.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "microvm.id: required")
	}
	if spec.GetUid() != "" {
		return nil, status.Error(codes.InvalidArgument, "microvm.uid: set by the server; leave it empty")
	}
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	for k, v := range spec.Metadata {
		if _, err := base64.StdEncoding.DecodeString(v); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "microvm.metadata[%q]: value is not standard base64: %v", k, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if fn := s.createFn; fn != nil {
		if err := fn(spec); err != nil {
			return nil, err
		}
	}
	if s.byName(spec.Namespace, spec.Id) != nil {
		return nil, status.Errorf(codes.AlreadyExists, "microvm %s/%s already exists", spec.Namespace, spec.Id)
	}
	uid := ulid.Make().String()
	now := timestamppb.Now()
	spec.Uid, spec.CreatedAt, spec.UpdatedAt = &uid, now, now
	vm := &types.MicroVM{Version: 1, Spec: spec, Status: &types.MicroVMStatus{State: s.opts.InitialState}}
	s.vms[uid] = vm
	return &microvmv1.CreateMicroVMResponse{Microvm: proto.CloneOf(vm)}, nil
}

// GetMicroVM returns a microVM by uid.
func (s *Server) GetMicroVM(_ context.Context, req *microvmv1.GetMicroVMRequest) (*microvmv1.GetMicroVMResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, ok := s.vms[req.GetUid()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "microvm %s not found", req.GetUid())
	}
	return &microvmv1.GetMicroVMResponse{Microvm: proto.CloneOf(vm)}, nil
}

// DeleteMicroVM marks a microVM DELETING (or removes it with
// RemoveOnDelete).
func (s *Server) DeleteMicroVM(_ context.Context, req *microvmv1.DeleteMicroVMRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, ok := s.vms[req.GetUid()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "microvm %s not found", req.GetUid())
	}
	if s.opts.RemoveOnDelete {
		delete(s.vms, req.GetUid())
		return &emptypb.Empty{}, nil
	}
	vm.Status.State = types.MicroVMStatus_DELETING
	vm.Spec.DeletedAt = timestamppb.Now()
	vm.Version++
	return &emptypb.Empty{}, nil
}

// ListMicroVMs filters by namespace and name.
func (s *Server) ListMicroVMs(_ context.Context, req *microvmv1.ListMicroVMsRequest) (*microvmv1.ListMicroVMsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &microvmv1.ListMicroVMsResponse{}
	for _, vm := range s.vms {
		if ns := req.GetNamespace(); ns != "" && vm.Spec.Namespace != ns {
			continue
		}
		if n := req.GetName(); n != "" && vm.Spec.Id != n {
			continue
		}
		resp.Microvm = append(resp.Microvm, proto.CloneOf(vm))
	}
	return resp, nil
}

// GetCapacity reports the configured totals less the microVMs that hold
// resources (not DELETING, not FAILED).
func (s *Server) GetCapacity(context.Context, *hostv1.GetCapacityRequest) (*hostv1.GetCapacityResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var vcpu, mem, n uint32
	for _, vm := range s.vms {
		if st := vm.Status.State; st == types.MicroVMStatus_DELETING || st == types.MicroVMStatus_FAILED {
			continue
		}
		vcpu += uint32(vm.Spec.Vcpu)
		mem += uint32(vm.Spec.MemoryInMb)
		n++
	}
	sub := func(a, b uint32) uint32 {
		if b > a {
			return 0
		}
		return a - b
	}
	return &hostv1.GetCapacityResponse{
		Hostname:           "flintlocktest",
		TotalVcpu:          s.opts.TotalVCPU,
		AllocatedVcpu:      vcpu,
		FreeVcpu:           sub(s.opts.TotalVCPU, vcpu),
		TotalMemoryMib:     s.opts.TotalMemoryMiB,
		AllocatedMemoryMib: mem,
		FreeMemoryMib:      sub(s.opts.TotalMemoryMiB, mem),
		MicrovmCount:       n,
	}, nil
}

// auth checks the token as flintlockd does and counts the calls.
func (s *Server) auth(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := server.Authenticate(ctx, info.FullMethod, s.opts.Token); err != nil {
		s.mu.Lock()
		s.refused++
		s.mu.Unlock()
		return nil, err
	}
	s.mu.Lock()
	s.calls[info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]]++
	s.mu.Unlock()
	return h(ctx, req)
}

// Refused is the number of calls refused for a missing or wrong token.
func (s *Server) Refused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}
