package server

import (
	"context"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/containerd/errdefs"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	powerv1 "github.com/liquidmetal-go/liquidmetal/api/services/power/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

// maxStopTimeout bounds the graceful shutdown time a request may ask for.
const maxStopTimeout = time.Hour

// powerService implements the power service: power operations record what
// they ask in spec.power and queue the VM (the reconciler carries them out,
// see internal/reconcile/power.go); the watch streams the store's changes;
// console.go serves the consoles.
type powerService struct {
	powerv1.UnimplementedPowerServiceServer
	s *Server
	// stateDir holds the VMs' folders under vm/<namespace>/<name>/<uid>.
	stateDir string
	// consolePoll is how often a followed console is checked for output.
	consolePoll time.Duration
}

var _ powerv1.PowerServiceServer = (*powerService)(nil)

// StartMicroVM asks for a stopped VM's VMM to run again.
func (p *powerService) StartMicroVM(ctx context.Context, req *powerv1.StartMicroVMRequest) (*powerv1.StartMicroVMResponse, error) {
	vm, err := p.setPower(ctx, "start", req.GetUid(), func(pw *types.MicroVMPower) error {
		if !pw.GetStopped() {
			return fmt.Errorf("microvm %s is not stopped: %w", req.GetUid(), errdefs.ErrFailedPrecondition)
		}
		pw.Stopped = false
		return nil
	})
	if err != nil {
		return nil, p.s.toStatus(ctx, err)
	}
	return &powerv1.StartMicroVMResponse{Microvm: vm}, nil
}

// StopMicroVM asks for a running VM's VMM to be stopped.
func (p *powerService) StopMicroVM(ctx context.Context, req *powerv1.StopMicroVMRequest) (*powerv1.StopMicroVMResponse, error) {
	if err := checkTimeout(req.GetTimeout()); err != nil {
		return nil, p.s.toStatus(ctx, err)
	}
	vm, err := p.setPower(ctx, "stop", req.GetUid(), func(pw *types.MicroVMPower) error {
		if pw.GetStopped() {
			return fmt.Errorf("microvm %s is stopped already: %w", req.GetUid(), errdefs.ErrFailedPrecondition)
		}
		pw.Stopped = true
		pw.StopTimeout = req.GetTimeout()
		return nil
	})
	if err != nil {
		return nil, p.s.toStatus(ctx, err)
	}
	return &powerv1.StopMicroVMResponse{Microvm: vm}, nil
}

// RestartMicroVM asks for a running VM's VMM to be stopped and started.
func (p *powerService) RestartMicroVM(ctx context.Context, req *powerv1.RestartMicroVMRequest) (*powerv1.RestartMicroVMResponse, error) {
	if err := checkTimeout(req.GetTimeout()); err != nil {
		return nil, p.s.toStatus(ctx, err)
	}
	vm, err := p.setPower(ctx, "restart", req.GetUid(), func(pw *types.MicroVMPower) error {
		if pw.GetStopped() {
			return fmt.Errorf("microvm %s is stopped (start it instead): %w", req.GetUid(), errdefs.ErrFailedPrecondition)
		}
		pw.RestartGeneration++
		pw.StopTimeout = req.GetTimeout()
		return nil
	})
	if err != nil {
		return nil, p.s.toStatus(ctx, err)
	}
	return &powerv1.RestartMicroVMResponse{Microvm: vm}, nil
}

func checkTimeout(d *durationpb.Duration) error {
	if d == nil {
		return nil
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() < 0 || d.AsDuration() > maxStopTimeout {
		return fmt.Errorf("timeout: must be between 0 and %v: %w", maxStopTimeout, errdefs.ErrInvalidArgument)
	}
	return nil
}

// setPower applies fn to the spec.power of a CREATED VM that is not being
// deleted, stores it and queues the VM.
func (p *powerService) setPower(ctx context.Context, op, uid string, fn func(*types.MicroVMPower) error) (*types.MicroVM, error) {
	if uid == "" {
		return nil, fmt.Errorf("uid: required: %w", errdefs.ErrInvalidArgument)
	}
	vm, err := p.s.store.Update(ctx, uid, func(vm *types.MicroVM) error {
		switch st := vm.GetStatus().GetState(); {
		case vm.Spec.GetDeletedAt() != nil || st == types.MicroVMStatus_DELETING:
			return fmt.Errorf("microvm %s is being deleted: %w", uid, errdefs.ErrFailedPrecondition)
		case st != types.MicroVMStatus_CREATED:
			return fmt.Errorf("microvm %s is %s, not CREATED: %w", uid, st, errdefs.ErrFailedPrecondition)
		}
		if vm.Spec.Power == nil {
			vm.Spec.Power = &types.MicroVMPower{}
		}
		if err := fn(vm.Spec.Power); err != nil {
			return err
		}
		vm.Spec.UpdatedAt = timestamppb.New(p.s.now())
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.s.queue.Enqueue(uid)
	p.s.log.InfoContext(ctx, "microvm "+op+" requested", "uid", uid, "namespace", vm.GetSpec().GetNamespace(), "name", vm.GetSpec().GetId())
	return vm, nil
}

// WatchMicroVMs sends a snapshot of the VMs, then their changes.
func (p *powerService) WatchMicroVMs(req *powerv1.WatchMicroVMsRequest, stream powerv1.PowerService_WatchMicroVMsServer) error {
	ctx := stream.Context()
	snap, sub, err := p.s.store.Watch(ctx, req.GetNamespace())
	if err != nil {
		return p.s.toStatus(ctx, err)
	}
	defer sub.Close()
	sort.Slice(snap, func(i, j int) bool {
		a, b := snap[i].GetSpec(), snap[j].GetSpec()
		if a.GetNamespace() != b.GetNamespace() {
			return a.GetNamespace() < b.GetNamespace()
		}
		return a.GetId() < b.GetId()
	})
	now := timestamppb.New(p.s.now())
	for _, vm := range snap {
		ev := watchEvent(powerv1.WatchMicroVMsResponse_SNAPSHOT, vm)
		ev.OldState = ev.NewState
		ev.Time = now
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	if err := stream.Send(&powerv1.WatchMicroVMsResponse{Type: powerv1.WatchMicroVMsResponse_SYNCED, Time: now}); err != nil {
		return err
	}
	for {
		e, err := sub.Next(ctx)
		if err != nil {
			return p.s.toStatus(ctx, err)
		}
		var ev *powerv1.WatchMicroVMsResponse
		switch e.Kind {
		case store.Added:
			ev = watchEvent(powerv1.WatchMicroVMsResponse_ADDED, e.New)
		case store.Updated:
			old := store.DetailedState(e.Old.GetStatus())
			if old == store.DetailedState(e.New.GetStatus()) {
				continue
			}
			ev = watchEvent(powerv1.WatchMicroVMsResponse_CHANGED, e.New)
			ev.OldState = old
		case store.Removed:
			ev = watchEvent(powerv1.WatchMicroVMsResponse_REMOVED, e.Old)
			ev.OldState = ev.NewState
		default:
			continue
		}
		ev.Time = timestamppb.New(e.Time)
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
}

func watchEvent(t powerv1.WatchMicroVMsResponse_EventType, vm *types.MicroVM) *powerv1.WatchMicroVMsResponse {
	return &powerv1.WatchMicroVMsResponse{
		Type:          t,
		Uid:           vm.GetSpec().GetUid(),
		Namespace:     vm.GetSpec().GetNamespace(),
		Name:          vm.GetSpec().GetId(),
		NewState:      store.DetailedState(vm.GetStatus()),
		Version:       vm.GetVersion(),
		FailureReason: vm.GetStatus().GetFailureReason(),
	}
}

// powerGateway serves the power service to the HTTP gateway through an
// in-memory gRPC connection: grpc-gateway's in-process registration cannot
// serve streaming methods. Calls pass the same interceptors as over the
// network (the gateway forwards the Authorization header).
type powerGateway struct {
	gs   *grpc.Server
	conn *grpc.ClientConn
}

func (s *Server) registerPowerGateway(ctx context.Context, mux *runtime.ServeMux) (*powerGateway, error) {
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(s.maxRecv),
		grpc.ChainUnaryInterceptor(s.unary...),
		grpc.ChainStreamInterceptor(s.stream...),
	)
	powerv1.RegisterPowerServiceServer(gs, s.power)
	go func() { _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///power-gateway",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		gs.Stop()
		return nil, fmt.Errorf("power gateway connection: %w", err)
	}
	if err := powerv1.RegisterPowerServiceHandlerClient(ctx, mux, powerv1.NewPowerServiceClient(conn)); err != nil {
		_ = conn.Close()
		gs.Stop()
		return nil, fmt.Errorf("register power gateway: %w", err)
	}
	return &powerGateway{gs: gs, conn: conn}, nil
}

func (g *powerGateway) close() {
	_ = g.conn.Close()
	g.gs.Stop()
}
