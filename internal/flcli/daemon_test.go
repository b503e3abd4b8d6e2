package flcli

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// fakeDaemon is a test double of flintlockd: a real gRPC server on loopback
// serving the v1alpha1 MicroVM API from an in-memory map, recording what
// clients send. The real daemon is tested end to end elsewhere.
type fakeDaemon struct {
	v1alpha1.UnimplementedMicroVMServer

	mu   sync.Mutex
	vms  map[string]*types.MicroVM
	next int
	// steps are applied to a VM, one per Get, before answering: they play
	// the reconciler. A step returning true removes the VM.
	steps map[string][]func(*types.MicroVM) bool
	// What clients sent.
	creates []*v1alpha1.CreateMicroVMRequest
	lists   []*v1alpha1.ListMicroVMsRequest
	deletes []string
	auth    []string // authorization metadata of every call
}

// startDaemon serves a fakeDaemon on loopback, with TLS when cfg is set.
func startDaemon(t *testing.T, cfg *tls.Config) (*fakeDaemon, string) {
	t.Helper()
	d := &fakeDaemon{vms: map[string]*types.MicroVM{}, steps: map[string][]func(*types.MicroVM) bool{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		d.mu.Lock()
		d.auth = append(d.auth, strings.Join(md.Get("authorization"), ","))
		d.mu.Unlock()
		return h(ctx, req)
	})}
	if cfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	srv := grpc.NewServer(opts...)
	v1alpha1.RegisterMicroVMServer(srv, d)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return d, lis.Addr().String()
}

// add stores a VM as the daemon would have created it and returns its uid.
func (d *fakeDaemon) add(spec *types.MicroVMSpec, state types.MicroVMStatus_MicroVMState) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.next++
	uid := fmt.Sprintf("01TESTUID%06d", d.next)
	spec = proto.Clone(spec).(*types.MicroVMSpec)
	spec.Uid = proto.String(uid)
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.GetProvider() == "" {
		spec.Provider = proto.String("qemu")
	}
	spec.CreatedAt = timestamppb.New(time.Now().Add(-90 * time.Second))
	d.vms[uid] = &types.MicroVM{Version: 1, Spec: spec, Status: &types.MicroVMStatus{State: state}}
	return uid
}

func (d *fakeDaemon) addSteps(uid string, steps ...func(*types.MicroVM) bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.steps[uid] = append(d.steps[uid], steps...)
}

func (d *fakeDaemon) remove(uid string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.vms, uid)
}

func (d *fakeDaemon) get(uid string) *types.MicroVM {
	d.mu.Lock()
	defer d.mu.Unlock()
	return proto.Clone(d.vms[uid]).(*types.MicroVM)
}

func (d *fakeDaemon) CreateMicroVM(_ context.Context, req *v1alpha1.CreateMicroVMRequest) (*v1alpha1.CreateMicroVMResponse, error) {
	d.mu.Lock()
	d.creates = append(d.creates, proto.Clone(req).(*v1alpha1.CreateMicroVMRequest))
	for _, vm := range d.vms {
		if vm.Spec.Id == req.GetMicrovm().GetId() && vm.Spec.Namespace == req.GetMicrovm().GetNamespace() {
			d.mu.Unlock()
			return nil, status.Error(codes.AlreadyExists, "microvm already exists")
		}
	}
	d.mu.Unlock()
	uid := d.add(req.GetMicrovm(), types.MicroVMStatus_PENDING)
	return &v1alpha1.CreateMicroVMResponse{Microvm: d.get(uid)}, nil
}

func (d *fakeDaemon) GetMicroVM(_ context.Context, req *v1alpha1.GetMicroVMRequest) (*v1alpha1.GetMicroVMResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, ok := d.vms[req.Uid]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "microvm %s not found", req.Uid)
	}
	if steps := d.steps[req.Uid]; len(steps) > 0 {
		d.steps[req.Uid] = steps[1:]
		if steps[0](vm) {
			delete(d.vms, req.Uid)
			return nil, status.Errorf(codes.NotFound, "microvm %s not found", req.Uid)
		}
		vm.Version++
	}
	return &v1alpha1.GetMicroVMResponse{Microvm: proto.Clone(vm).(*types.MicroVM)}, nil
}

func (d *fakeDaemon) ListMicroVMs(_ context.Context, req *v1alpha1.ListMicroVMsRequest) (*v1alpha1.ListMicroVMsResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lists = append(d.lists, proto.Clone(req).(*v1alpha1.ListMicroVMsRequest))
	resp := &v1alpha1.ListMicroVMsResponse{}
	for _, vm := range d.vms {
		if req.Namespace != "" && vm.Spec.Namespace != req.Namespace {
			continue
		}
		if req.Name != nil && vm.Spec.Id != req.GetName() {
			continue
		}
		if !matchesEqualitySelector(vm.Spec.Labels, req.LabelSelector) {
			continue
		}
		resp.Microvm = append(resp.Microvm, proto.Clone(vm).(*types.MicroVM))
	}
	return resp, nil
}

// matchesEqualitySelector understands only "k=v,k2=v2": enough for a double.
func matchesEqualitySelector(labels map[string]string, sel string) bool {
	if sel == "" {
		return true
	}
	for _, term := range strings.Split(sel, ",") {
		k, v, _ := strings.Cut(term, "=")
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (d *fakeDaemon) DeleteMicroVM(_ context.Context, req *v1alpha1.DeleteMicroVMRequest) (*emptypb.Empty, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.deletes = append(d.deletes, req.Uid)
	vm, ok := d.vms[req.Uid]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "microvm %s not found", req.Uid)
	}
	vm.Status.State = types.MicroVMStatus_DELETING
	return &emptypb.Empty{}, nil
}

// syncBuffer is an io.Writer safe to read while a command writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runFL runs the fl command tree in process with args, polling fast.
func runFL(ctx context.Context, stdout, stderr *syncBuffer, args ...string) error {
	root := newRootCommand(&globals{pollInterval: 20 * time.Millisecond})
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

// fl runs fl with args and returns its stdout, stderr and error.
func fl(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut syncBuffer
	err := runFL(ctx, &out, &errOut, args...)
	return out.String(), errOut.String(), err
}
