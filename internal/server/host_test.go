package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	hostv1 "github.com/liquidmetal-go/liquidmetal/api/services/host/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

// hostEnv is a real gRPC server over a real store, with a host capacity
// configuration of the test's choosing.
type hostEnv struct {
	srv     *Server
	store   *store.Store
	reg     *prometheus.Registry
	addr    string
	host    hostv1.HostServiceClient
	microvm v1alpha1.MicroVMClient
}

func newHostEnv(t *testing.T, capCfg CapacityConfig, token string, tlsCfg *tls.Config, clientCreds credentials.TransportCredentials) *hostEnv {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	reg := prometheus.NewRegistry()
	srv, err := New(Config{
		Store:           st,
		Queue:           &fakeQueue{},
		Providers:       []string{"qemu"},
		DefaultProvider: "qemu",
		Token:           token,
		Registerer:      reg,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		Capacity:        capCfg,
	})
	if err != nil {
		t.Fatal(err)
	}
	var creds credentials.TransportCredentials
	if tlsCfg != nil {
		creds = credentials.NewTLS(tlsCfg)
	}
	gs := srv.GRPCServer(creds)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	if clientCreds == nil {
		clientCreds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(clientCreds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &hostEnv{
		srv: srv, store: st, reg: reg, addr: lis.Addr().String(),
		host: hostv1.NewHostServiceClient(conn), microvm: v1alpha1.NewMicroVMClient(conn),
	}
}

func (e *hostEnv) capacity(t *testing.T, ctx context.Context) *hostv1.GetCapacityResponse {
	t.Helper()
	resp, err := e.host.GetCapacity(ctx, &hostv1.GetCapacityRequest{})
	if err != nil {
		t.Fatalf("GetCapacity: %v", err)
	}
	return resp
}

func (e *hostEnv) create(t *testing.T, ctx context.Context, name string, vcpu, memMB int32) string {
	t.Helper()
	sp := spec("caps", name, nil)
	sp.Vcpu, sp.MemoryInMb = vcpu, memMB
	resp, err := e.microvm.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: sp})
	if err != nil {
		t.Fatalf("CreateMicroVM %s: %v", name, err)
	}
	return resp.GetMicrovm().GetSpec().GetUid()
}

// usage is the allocation part of a capacity response.
type usage struct {
	allocVCPU, freeVCPU, allocMem, freeMem, count uint32
}

func usageOf(r *hostv1.GetCapacityResponse) usage {
	return usage{r.GetAllocatedVcpu(), r.GetFreeVcpu(), r.GetAllocatedMemoryMib(), r.GetFreeMemoryMib(), r.GetMicrovmCount()}
}

func TestHostCapacityAccounting(t *testing.T) {
	// 4 CPUs at 1.5 overcommit offer 6 vCPUs; 8192 MiB less 1024 reserved
	// offers 7168 MiB.
	e := newHostEnv(t, CapacityConfig{VCPUs: 4, VCPUOvercommit: 1.5, MemoryMiB: 8192, ReservedMemoryMiB: 1024, Version: "v0.0.0-test"}, "", nil, nil)
	ctx := ctxT(t)

	r := e.capacity(t, ctx)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetHostname() != host || r.GetVersion() != "v0.0.0-test" {
		t.Errorf("hostname %q version %q, want %q v0.0.0-test", r.GetHostname(), r.GetVersion(), host)
	}
	if r.GetTotalVcpu() != 6 || r.GetTotalMemoryMib() != 7168 {
		t.Errorf("totals %d vCPU %d MiB, want 6 and 7168", r.GetTotalVcpu(), r.GetTotalMemoryMib())
	}
	if got, want := usageOf(r), (usage{0, 6, 0, 7168, 0}); got != want {
		t.Errorf("empty host: %+v, want %+v", got, want)
	}

	e.create(t, ctx, "a", 2, 1024)
	b := e.create(t, ctx, "b", 1, 2048)
	c := e.create(t, ctx, "c", 2, 512)
	if got, want := usageOf(e.capacity(t, ctx)), (usage{5, 1, 3584, 3584, 3}); got != want {
		t.Errorf("three VMs: %+v, want %+v", got, want)
	}

	// A VM being deleted no longer counts.
	if _, err := e.microvm.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: b}); err != nil {
		t.Fatal(err)
	}
	if got, want := usageOf(e.capacity(t, ctx)), (usage{4, 2, 1536, 5632, 2}); got != want {
		t.Errorf("after deleting b: %+v, want %+v", got, want)
	}
	// Nor does one that FAILED (the reconciler released it).
	if _, err := e.store.Update(ctx, c, func(vm *types.MicroVM) error {
		vm.Status.State = types.MicroVMStatus_FAILED
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := usageOf(e.capacity(t, ctx)), (usage{2, 4, 1024, 6144, 1}); got != want {
		t.Errorf("after c failed: %+v, want %+v", got, want)
	}
	// Running (CREATED) VMs count like pending ones.
	if _, err := e.store.Update(ctx, e.create(t, ctx, "d", 1, 256), func(vm *types.MicroVM) error {
		vm.Status.State = types.MicroVMStatus_CREATED
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := usageOf(e.capacity(t, ctx)), (usage{3, 3, 1280, 5888, 2}); got != want {
		t.Errorf("after d created: %+v, want %+v", got, want)
	}

	// Overcommitted beyond the totals: free stops at zero, allocation
	// still tells by how much.
	e.create(t, ctx, "big", 8, 8192)
	if got, want := usageOf(e.capacity(t, ctx)), (usage{11, 0, 9472, 0, 3}); got != want {
		t.Errorf("over capacity: %+v, want %+v", got, want)
	}
}

// meminfoMiB reads MemTotal from /proc/meminfo, independently of the code
// under test.
func meminfoMiB(t *testing.T) uint32 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb uint64
		if n, _ := fmt.Sscanf(line, "MemTotal: %d kB", &kb); n == 1 {
			return uint32(kb >> 10)
		}
	}
	t.Fatal("no MemTotal in /proc/meminfo")
	return 0
}

func TestHostCapacityMeasuresHost(t *testing.T) {
	e := newHostEnv(t, CapacityConfig{}, "", nil, nil)
	r := e.capacity(t, ctxT(t))
	if got, want := r.GetTotalVcpu(), uint32(runtime.NumCPU()); got != want {
		t.Errorf("total vCPU %d, want runtime.NumCPU() %d", got, want)
	}
	if got, want := r.GetTotalMemoryMib(), meminfoMiB(t); got != want {
		t.Errorf("total memory %d MiB, want MemTotal %d MiB", got, want)
	}
	if r.GetVersion() == "" {
		t.Error("version is empty")
	}

	// The reservation and the overcommit apply to the measured values.
	e = newHostEnv(t, CapacityConfig{VCPUOvercommit: 3, ReservedMemoryMiB: 100}, "", nil, nil)
	r = e.capacity(t, ctxT(t))
	if got, want := r.GetTotalVcpu(), uint32(3*runtime.NumCPU()); got != want {
		t.Errorf("total vCPU %d, want 3×%d", got, runtime.NumCPU())
	}
	if got, want := r.GetTotalMemoryMib(), meminfoMiB(t)-100; got != want {
		t.Errorf("total memory %d MiB, want %d", got, want)
	}
}

func TestHostCapacityInvalidConfig(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	for name, c := range map[string]CapacityConfig{
		"negative overcommit":     {VCPUOvercommit: -1},
		"overcommit below a vCPU": {VCPUs: 1, VCPUOvercommit: 0.5},
		"negative memory":         {MemoryMiB: -5},
		"reservation eats memory": {MemoryMiB: 1024, ReservedMemoryMiB: 1024},
		"negative reservation":    {ReservedMemoryMiB: -1},
	} {
		_, err := New(Config{Store: st, Queue: &fakeQueue{}, Capacity: c, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: New error %v, want invalid argument", name, err)
		}
	}
}

func TestHostServiceAuthAndTLS(t *testing.T) {
	p := newPKI(t)
	tlsCfg, err := TLSConfig(p.certFile, p.keyFile, p.caFile)
	if err != nil {
		t.Fatal(err)
	}
	clientTLS := credentials.NewTLS(&tls.Config{RootCAs: p.roots, Certificates: []tls.Certificate{p.clientCert}})
	e := newHostEnv(t, CapacityConfig{VCPUs: 2, MemoryMiB: 4096}, "s3cret", tlsCfg, clientTLS)
	ctx := ctxT(t)

	_, err = e.host.GetCapacity(ctx, &hostv1.GetCapacityRequest{})
	wantCode(t, err, codes.Unauthenticated, "authorization required")
	_, err = e.host.GetCapacity(withToken(ctx, "Basic", "wrong"), &hostv1.GetCapacityRequest{})
	wantCode(t, err, codes.Unauthenticated, "invalid token")
	r, err := e.host.GetCapacity(withToken(ctx, "Basic", "s3cret"), &hostv1.GetCapacityRequest{})
	if err != nil {
		t.Fatalf("GetCapacity with token: %v", err)
	}
	if r.GetTotalVcpu() != 2 || r.GetTotalMemoryMib() != 4096 {
		t.Errorf("totals %d/%d, want 2/4096", r.GetTotalVcpu(), r.GetTotalMemoryMib())
	}

	// Mutual TLS applies to this service as to the MicroVM one.
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: p.roots})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_, err = hostv1.NewHostServiceClient(conn).GetCapacity(withToken(ctx, "Basic", "s3cret"), &hostv1.GetCapacityRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("client without certificate: %v, want refused", err)
	}

	// Health knows the service; the metrics count its calls.
	hresp, err := healthpb.NewHealthClient(dialTest(t, e.addr, clientTLS)).Check(ctx, &healthpb.HealthCheckRequest{Service: hostv1.HostService_ServiceDesc.ServiceName})
	if err != nil || hresp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health of %s: %v %v", hostv1.HostService_ServiceDesc.ServiceName, hresp, err)
	}
	if got := counterValue(t, e.reg, hostv1.HostService_GetCapacity_FullMethodName, "Unauthenticated"); got != 2 {
		t.Errorf("Unauthenticated GetCapacity calls counted %v, want 2", got)
	}
	if got := counterValue(t, e.reg, hostv1.HostService_GetCapacity_FullMethodName, "OK"); got != 1 {
		t.Errorf("OK GetCapacity calls counted %v, want 1", got)
	}
}

func dialTest(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestHostCapacityGateway(t *testing.T) {
	p := newPKI(t)
	cfg, err := TLSConfig(p.certFile, p.keyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	e := newHostEnv(t, CapacityConfig{VCPUs: 8, MemoryMiB: 16384, ReservedMemoryMiB: 384, Hostname: "host-a", Version: "v1.2.3"}, "tok", nil, nil)
	h, err := e.srv.Gateway()
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(h)
	hs.TLS = cfg
	hs.Config.ErrorLog = log.New(io.Discard, "", 0)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.roots}}, Timeout: 10 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	e.create(t, withToken(ctxT(t), "Basic", "tok"), "web", 3, 2048)

	code, body := doJSON(t, client, http.MethodGet, hs.URL+"/v1alpha1/host/capacity", "", nil)
	if code != http.StatusUnauthorized {
		t.Errorf("without token: %d %v, want 401", code, body)
	}
	code, body = doJSON(t, client, http.MethodGet, hs.URL+"/v1alpha1/host/capacity", "tok", nil)
	if code != http.StatusOK {
		t.Fatalf("GET capacity: %d %v", code, body)
	}
	want := map[string]any{
		"hostname": "host-a", "version": "v1.2.3",
		"totalVcpu": 8.0, "allocatedVcpu": 3.0, "freeVcpu": 5.0,
		"totalMemoryMib": 16000.0, "allocatedMemoryMib": 2048.0, "freeMemoryMib": 13952.0,
		"microvmCount": 1.0,
	}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("%s = %#v, want %#v (body %v)", k, body[k], v, body)
		}
	}
	// The MicroVM routes are still served beside it.
	code, body = doJSON(t, client, http.MethodGet, hs.URL+"/v1alpha1/microvms/caps", "tok", nil)
	if code != http.StatusOK || len(body["microvm"].([]any)) != 1 {
		t.Errorf("GET microvms: %d %v", code, body)
	}
}
