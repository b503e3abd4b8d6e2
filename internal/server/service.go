package server

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/validate"
)

// The RPC methods convert errors to gRPC statuses once, on return; the
// helpers below them work with errdefs errors.

// CreateMicroVM applies defaults, validates, stores the VM as PENDING under
// a new ULID and enqueues it.
func (s *Server) CreateMicroVM(ctx context.Context, req *v1alpha1.CreateMicroVMRequest) (*v1alpha1.CreateMicroVMResponse, error) {
	vm, err := s.create(ctx, req)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &v1alpha1.CreateMicroVMResponse{Microvm: vm}, nil
}

// DeleteMicroVM marks the VM deleted (state DELETING) and enqueues it; the
// reconciler removes the record once its resources are released. Deleting a
// VM that is already being deleted succeeds.
func (s *Server) DeleteMicroVM(ctx context.Context, req *v1alpha1.DeleteMicroVMRequest) (*emptypb.Empty, error) {
	if err := s.delete(ctx, req.GetUid()); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &emptypb.Empty{}, nil
}

// GetMicroVM returns one VM by uid.
func (s *Server) GetMicroVM(ctx context.Context, req *v1alpha1.GetMicroVMRequest) (*v1alpha1.GetMicroVMResponse, error) {
	if req.GetUid() == "" {
		return nil, s.toStatus(ctx, fmt.Errorf("uid: required: %w", errdefs.ErrInvalidArgument))
	}
	vm, err := s.store.Get(ctx, req.GetUid())
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &v1alpha1.GetMicroVMResponse{Microvm: vm}, nil
}

// ListMicroVMs returns the VMs matching the request's namespace, name and
// label selector, sorted by namespace and name.
func (s *Server) ListMicroVMs(ctx context.Context, req *v1alpha1.ListMicroVMsRequest) (*v1alpha1.ListMicroVMsResponse, error) {
	vms, err := s.list(ctx, req)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &v1alpha1.ListMicroVMsResponse{Microvm: vms}, nil
}

// ListMicroVMsStream is ListMicroVMs sending one message per VM.
func (s *Server) ListMicroVMsStream(req *v1alpha1.ListMicroVMsRequest, stream v1alpha1.MicroVM_ListMicroVMsStreamServer) error {
	ctx := stream.Context()
	vms, err := s.list(ctx, req)
	if err != nil {
		return s.toStatus(ctx, err)
	}
	for _, vm := range vms {
		if err := stream.Send(&v1alpha1.ListMessage{Microvm: vm}); err != nil {
			// Already a status from the transport (e.g. the client went away).
			return err
		}
	}
	return nil
}

func (s *Server) create(ctx context.Context, req *v1alpha1.CreateMicroVMRequest) (*types.MicroVM, error) {
	spec := req.GetMicrovm()
	// Defaults first: validation checks the spec as it will be stored.
	validate.Defaults(spec, s.defaultProvider)
	if err := validate.CreateMicroVMRequest(req, s.providers); err != nil {
		return nil, err
	}
	if s.admit != nil {
		if err := s.admit(spec); err != nil {
			return nil, err
		}
	}
	uid, err := s.newUID()
	if err != nil {
		return nil, err
	}
	now := timestamppb.New(s.now())
	// The server owns uid and the timestamps.
	spec.Uid = &uid
	spec.CreatedAt = now
	spec.UpdatedAt = now
	spec.DeletedAt = nil
	spec.Power = nil // the power service's
	vm := &types.MicroVM{
		Spec:   spec,
		Status: &types.MicroVMStatus{State: types.MicroVMStatus_PENDING},
	}
	if err := s.store.Create(ctx, vm); err != nil {
		return nil, err
	}
	s.queue.Enqueue(uid)
	s.log.InfoContext(ctx, "microvm created", "uid", uid, "namespace", spec.Namespace, "name", spec.Id)
	return vm, nil
}

func (s *Server) delete(ctx context.Context, uid string) error {
	if uid == "" {
		return fmt.Errorf("uid: required: %w", errdefs.ErrInvalidArgument)
	}
	vm, err := s.store.Get(ctx, uid)
	if err != nil {
		return err
	}
	if vm.GetSpec().GetDeletedAt() == nil || vm.GetStatus().GetState() != types.MicroVMStatus_DELETING {
		_, err = s.store.Update(ctx, uid, func(vm *types.MicroVM) error {
			now := timestamppb.New(s.now())
			if vm.Spec.DeletedAt == nil {
				vm.Spec.DeletedAt = now
			}
			vm.Spec.UpdatedAt = now
			if vm.Status == nil {
				vm.Status = &types.MicroVMStatus{}
			}
			vm.Status.State = types.MicroVMStatus_DELETING
			return nil
		})
		if err != nil {
			return err
		}
		s.log.InfoContext(ctx, "microvm deleting", "uid", uid, "namespace", vm.GetSpec().GetNamespace(), "name", vm.GetSpec().GetId())
	}
	// Enqueue even when already deleting: a repeated delete is a cheap
	// nudge, and the queue de-duplicates.
	s.queue.Enqueue(uid)
	return nil
}

func (s *Server) list(ctx context.Context, req *v1alpha1.ListMicroVMsRequest) ([]*types.MicroVM, error) {
	sel, err := labels.Parse(req.GetLabelSelector())
	if err != nil {
		return nil, fmt.Errorf("label_selector: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	// An optional string set to "" counts as unset.
	var name *string
	if req.GetName() != "" {
		name = req.Name
	}
	vms, err := s.store.List(ctx, req.GetNamespace(), name)
	if err != nil {
		return nil, err
	}
	if sel.Empty() {
		return vms, nil
	}
	out := vms[:0]
	for _, vm := range vms {
		if sel.Matches(labels.Set(vm.GetSpec().GetLabels())) {
			out = append(out, vm)
		}
	}
	return out, nil
}
