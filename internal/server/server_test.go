package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

// fakeQueue records enqueued uids.
type fakeQueue struct {
	mu   sync.Mutex
	uids []string
}

func (q *fakeQueue) Enqueue(uid string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.uids = append(q.uids, uid)
}

func (q *fakeQueue) got() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.uids)
}

type env struct {
	srv    *Server
	store  *store.Store
	queue  *fakeQueue
	reg    *prometheus.Registry
	addr   string
	client v1alpha1.MicroVMClient
	conn   *grpc.ClientConn
}

type envOpts struct {
	token    string
	maxRecv  int
	tls      *tls.Config                      // server side
	clientTC credentials.TransportCredentials // client side, with tls
}

// newEnv runs a real gRPC server on a loopback port over a real store.
func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	q := &fakeQueue{}
	reg := prometheus.NewRegistry()
	srv, err := New(Config{
		Store:           st,
		Queue:           q,
		Providers:       []string{"qemu", "firecracker"},
		DefaultProvider: "qemu",
		Token:           o.token,
		Registerer:      reg,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxRecvBytes:    o.maxRecv,
	})
	if err != nil {
		t.Fatal(err)
	}
	var creds credentials.TransportCredentials
	if o.tls != nil {
		creds = credentials.NewTLS(o.tls)
	}
	gs := srv.GRPCServer(creds)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	e := &env{srv: srv, store: st, queue: q, reg: reg, addr: lis.Addr().String()}
	clientCreds := o.clientTC
	if clientCreds == nil {
		clientCreds = insecure.NewCredentials()
	}
	e.conn = e.dial(t, clientCreds)
	e.client = v1alpha1.NewMicroVMClient(e.conn)
	return e
}

func (e *env) dial(t testing.TB, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func withToken(ctx context.Context, scheme, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", scheme+" "+base64.StdEncoding.EncodeToString([]byte(token)))
}

// spec is a minimal valid spec; defaults are left for the server.
func spec(namespace, name string, labels map[string]string) *types.MicroVMSpec {
	return &types.MicroVMSpec{
		Id:        name,
		Namespace: namespace,
		Labels:    labels,
		Kernel:    &types.Kernel{Image: "liquidmetal/kernel-bin:6.1"},
	}
}

func wantCode(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("error = %v, want code %v", err, code)
	}
	if !strings.Contains(st.Message(), substr) {
		t.Errorf("message %q does not contain %q", st.Message(), substr)
	}
}

func TestCreateGet(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := ctxT(t)

	before := time.Now().Add(-time.Second)
	resp, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("", "vm1", nil)})
	if err != nil {
		t.Fatalf("CreateMicroVM: %v", err)
	}
	vm := resp.GetMicrovm()
	uid := vm.GetSpec().GetUid()
	if _, err := ulid.ParseStrict(uid); err != nil {
		t.Errorf("uid %q is not a ULID: %v", uid, err)
	}
	sp := vm.GetSpec()
	if vm.GetStatus().GetState() != types.MicroVMStatus_PENDING || vm.GetVersion() != 1 {
		t.Errorf("state %v version %d, want PENDING 1", vm.GetStatus().GetState(), vm.GetVersion())
	}
	if sp.Namespace != "default" || sp.Vcpu != 2 || sp.MemoryInMb != 1024 || sp.GetProvider() != "qemu" {
		t.Errorf("defaults not applied: ns %q vcpu %d mem %d provider %q", sp.Namespace, sp.Vcpu, sp.MemoryInMb, sp.GetProvider())
	}
	if c := sp.GetCreatedAt().AsTime(); c.Before(before) || c.After(time.Now()) || !proto.Equal(sp.CreatedAt, sp.UpdatedAt) {
		t.Errorf("created_at %v updated_at %v", sp.CreatedAt, sp.UpdatedAt)
	}
	if got := e.queue.got(); !slices.Equal(got, []string{uid}) {
		t.Errorf("enqueued %v, want [%s]", got, uid)
	}

	got, err := e.client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
	if err != nil {
		t.Fatalf("GetMicroVM: %v", err)
	}
	if !proto.Equal(got.GetMicrovm(), vm) {
		t.Errorf("Get = %v\nwant %v", got.GetMicrovm(), vm)
	}

	// Same namespace/name again.
	_, err = e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("default", "vm1", nil)})
	wantCode(t, err, codes.AlreadyExists, "default/vm1")
	if n := len(e.queue.got()); n != 1 {
		t.Errorf("failed create was enqueued (%d uids)", n)
	}

	_, err = e.client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: "01J0000000000000000000000X"})
	wantCode(t, err, codes.NotFound, "not found")
	_, err = e.client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{})
	wantCode(t, err, codes.InvalidArgument, "uid")

	// The server owns the timestamps: a client's deleted_at is dropped.
	withDeleted := spec("default", "vm2", nil)
	withDeleted.DeletedAt = timestamppb.New(time.Unix(1, 0))
	withDeleted.CreatedAt = timestamppb.New(time.Unix(1, 0))
	r, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: withDeleted})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetMicrovm().GetSpec().GetDeletedAt() != nil || r.GetMicrovm().GetSpec().GetCreatedAt().AsTime().Before(before) {
		t.Errorf("client timestamps kept: %v", r.GetMicrovm().GetSpec())
	}
	prev := r.GetMicrovm().GetSpec().GetUid()

	// uids are monotonic in creation order.
	for i := range 5 {
		r, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("default", fmt.Sprintf("m%d", i), nil)})
		if err != nil {
			t.Fatal(err)
		}
		if u := r.GetMicrovm().GetSpec().GetUid(); u <= prev {
			t.Errorf("uid %s after %s is not increasing", u, prev)
		} else {
			prev = u
		}
	}
}

func TestCreateInvalid(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := ctxT(t)
	badMAC := spec("ns", "vm", nil)
	mac := "zz:zz"
	badMAC.Interfaces = []*types.NetworkInterface{{DeviceId: "eth1", Type: types.NetworkInterface_TAP, GuestMac: &mac}}
	withUID := spec("ns", "vm", nil)
	uid := "01J0000000000000000000000X"
	withUID.Uid = &uid
	unknownProvider := spec("ns", "vm", nil)
	p := "nope"
	unknownProvider.Provider = &p

	for _, tc := range []struct {
		name string
		req  *v1alpha1.CreateMicroVMRequest
		want string
	}{
		{"no spec", &v1alpha1.CreateMicroVMRequest{}, "microvm: required"},
		{"bad mac", &v1alpha1.CreateMicroVMRequest{Microvm: badMAC}, "microvm.interfaces[0].guest_mac"},
		{"uid set", &v1alpha1.CreateMicroVMRequest{Microvm: withUID}, "microvm.uid"},
		{"provider", &v1alpha1.CreateMicroVMRequest{Microvm: unknownProvider}, "microvm.provider"},
		{"no kernel", &v1alpha1.CreateMicroVMRequest{Microvm: &types.MicroVMSpec{Id: "vm"}}, "microvm.kernel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client.CreateMicroVM(ctx, tc.req)
			wantCode(t, err, codes.InvalidArgument, tc.want)
		})
	}
	if n := len(e.queue.got()); n != 0 {
		t.Errorf("%d invalid creates enqueued", n)
	}
	if vms, _ := e.store.List(ctx, "", nil); len(vms) != 0 {
		t.Errorf("%d invalid creates stored", len(vms))
	}
}

func TestDelete(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := ctxT(t)
	resp, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("ns", "vm", nil)})
	if err != nil {
		t.Fatal(err)
	}
	uid := resp.GetMicrovm().GetSpec().GetUid()

	if _, err := e.client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatalf("DeleteMicroVM: %v", err)
	}
	got, err := e.client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
	if err != nil {
		t.Fatalf("Get after delete: %v", err)
	}
	vm := got.GetMicrovm()
	if vm.GetStatus().GetState() != types.MicroVMStatus_DELETING || vm.GetSpec().GetDeletedAt() == nil {
		t.Fatalf("after delete: state %v deleted_at %v", vm.GetStatus().GetState(), vm.GetSpec().GetDeletedAt())
	}
	if q := e.queue.got(); !slices.Equal(q, []string{uid, uid}) {
		t.Errorf("enqueued %v, want create and delete of %s", q, uid)
	}
	// Still listed while DELETING.
	list, err := e.client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{Namespace: "ns"})
	if err != nil || len(list.GetMicrovm()) != 1 {
		t.Errorf("List while deleting = %v, %v", list, err)
	}

	// Idempotent: success, same deleted_at, no new version.
	if _, err := e.client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatalf("second DeleteMicroVM: %v", err)
	}
	again, err := e.client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(again.GetMicrovm(), vm) {
		t.Errorf("second delete changed the record:\n%v\nwas %v", again.GetMicrovm(), vm)
	}

	_, err = e.client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: "01J0000000000000000000000X"})
	wantCode(t, err, codes.NotFound, "not found")
}

func TestList(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := ctxT(t)
	for _, c := range []struct {
		ns, name string
		labels   map[string]string
	}{
		{"ns1", "b", map[string]string{"role": "worker", "tier": "web"}},
		{"ns1", "a", map[string]string{"role": "control-plane"}},
		{"ns2", "a", map[string]string{"role": "worker", "gpu": "true"}},
		{"ns2", "c", nil},
	} {
		if _, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec(c.ns, c.name, c.labels)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		req  *v1alpha1.ListMicroVMsRequest
		want []string
	}{
		{"all", &v1alpha1.ListMicroVMsRequest{}, []string{"ns1/a", "ns1/b", "ns2/a", "ns2/c"}},
		{"namespace", &v1alpha1.ListMicroVMsRequest{Namespace: "ns2"}, []string{"ns2/a", "ns2/c"}},
		{"name", &v1alpha1.ListMicroVMsRequest{Namespace: "ns1", Name: proto.String("b")}, []string{"ns1/b"}},
		{"name in all namespaces", &v1alpha1.ListMicroVMsRequest{Name: proto.String("a")}, []string{"ns1/a", "ns2/a"}},
		{"empty name is unset", &v1alpha1.ListMicroVMsRequest{Namespace: "ns1", Name: proto.String("")}, []string{"ns1/a", "ns1/b"}},
		{"equality selector", &v1alpha1.ListMicroVMsRequest{LabelSelector: "role=worker"}, []string{"ns1/b", "ns2/a"}},
		{"set selector", &v1alpha1.ListMicroVMsRequest{LabelSelector: "role in (control-plane,worker),!gpu"}, []string{"ns1/a", "ns1/b"}},
		{"inequality selector", &v1alpha1.ListMicroVMsRequest{Namespace: "ns2", LabelSelector: "role!=worker"}, []string{"ns2/c"}},
		{"no match", &v1alpha1.ListMicroVMsRequest{LabelSelector: "tier=db"}, nil},
		{"unknown namespace", &v1alpha1.ListMicroVMsRequest{Namespace: "nope"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.client.ListMicroVMs(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, vm := range resp.GetMicrovm() {
				got = append(got, vm.GetSpec().GetNamespace()+"/"+vm.GetSpec().GetId())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("List = %v, want %v", got, tc.want)
			}

			stream, err := e.client.ListMicroVMsStream(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			var streamed []*types.MicroVM
			for {
				msg, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("stream: %v", err)
				}
				streamed = append(streamed, msg.GetMicrovm())
			}
			if !slices.EqualFunc(streamed, resp.GetMicrovm(), func(a, b *types.MicroVM) bool { return proto.Equal(a, b) }) {
				t.Errorf("stream sent %d VMs unlike List's %d", len(streamed), len(resp.GetMicrovm()))
			}
		})
	}

	bad := &v1alpha1.ListMicroVMsRequest{LabelSelector: "role in (a"}
	_, err := e.client.ListMicroVMs(ctx, bad)
	wantCode(t, err, codes.InvalidArgument, "label_selector")
	stream, err := e.client.ListMicroVMsStream(ctx, bad)
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.InvalidArgument, "label_selector")
}

func TestMaxRecvSize(t *testing.T) {
	e := newEnv(t, envOpts{maxRecv: 64 << 10})
	ctx := ctxT(t)
	small := spec("ns", "small", nil)
	small.Metadata = map[string]string{"user-data": base64.StdEncoding.EncodeToString(make([]byte, 16<<10))}
	if _, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: small}); err != nil {
		t.Fatalf("create under the limit: %v", err)
	}
	big := spec("ns", "big", nil)
	big.Metadata = map[string]string{"user-data": base64.StdEncoding.EncodeToString(make([]byte, 96<<10))}
	_, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: big})
	wantCode(t, err, codes.ResourceExhausted, "")
	if _, err := e.store.GetByName(ctx, "ns", "big"); err == nil {
		t.Error("oversized request was stored")
	}

	// The default is 4 MiB.
	d := newEnv(t, envOpts{})
	huge := spec("ns", "huge", nil)
	huge.Metadata = map[string]string{"user-data": base64.StdEncoding.EncodeToString(make([]byte, 4<<20))}
	_, err = d.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: huge})
	wantCode(t, err, codes.ResourceExhausted, "")
}

func TestAuth(t *testing.T) {
	const token = "s3cret-token"
	e := newEnv(t, envOpts{token: token})
	ctx := ctxT(t)
	list := func(ctx context.Context) error {
		_, err := e.client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
		return err
	}
	stream := func(ctx context.Context) error {
		s, err := e.client.ListMicroVMsStream(ctx, &v1alpha1.ListMicroVMsRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		if err == io.EOF {
			return nil
		}
		return err
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		ok   bool
	}{
		{"no token", ctx, false},
		{"wrong token", withToken(ctx, "Basic", "s3cret-tokeN"), false},
		{"token prefix", withToken(ctx, "Basic", "s3cret"), false},
		{"wrong scheme", withToken(ctx, "Bearer", token), false},
		{"not base64", metadata.AppendToOutgoingContext(ctx, "authorization", "Basic "+token), false},
		{"Basic", withToken(ctx, "Basic", token), true},
		{"basic lowercase", withToken(ctx, "basic", token), true},
		{"BASIC uppercase", withToken(ctx, "BASIC", token), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for call, fn := range map[string]func(context.Context) error{"unary": list, "stream": stream} {
				err := fn(tc.ctx)
				if tc.ok && err != nil {
					t.Errorf("%s: %v", call, err)
				}
				if !tc.ok && status.Code(err) != codes.Unauthenticated {
					t.Errorf("%s: %v, want Unauthenticated", call, err)
				}
			}
		})
	}
	// Probes need no token.
	h, err := healthpb.NewHealthClient(e.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: v1alpha1.MicroVM_ServiceDesc.ServiceName})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, %v", h, err)
	}

	// Refused calls are counted by code.
	if n := counterValue(t, e.reg, v1alpha1.MicroVM_ListMicroVMs_FullMethodName, "Unauthenticated"); n != 5 {
		t.Errorf("Unauthenticated ListMicroVMs count = %v, want 5", n)
	}
	if n := counterValue(t, e.reg, v1alpha1.MicroVM_ListMicroVMs_FullMethodName, "OK"); n != 3 {
		t.Errorf("OK ListMicroVMs count = %v, want 3", n)
	}
}

// counterValue reads flintlockd_grpc_requests_total{method,code}.
func counterValue(t *testing.T, reg *prometheus.Registry, method, code string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "flintlockd_grpc_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["method"] == method && labels["code"] == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := ctxT(t)
	for i := range 3 {
		if _, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("ns", fmt.Sprint("vm", i), nil)}); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = e.client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: "missing"})
	if n := counterValue(t, e.reg, v1alpha1.MicroVM_CreateMicroVM_FullMethodName, "OK"); n != 3 {
		t.Errorf("CreateMicroVM OK = %v, want 3", n)
	}
	if n := counterValue(t, e.reg, v1alpha1.MicroVM_GetMicroVM_FullMethodName, "NotFound"); n != 1 {
		t.Errorf("GetMicroVM NotFound = %v, want 1", n)
	}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var samples uint64
	for _, mf := range mfs {
		if mf.GetName() == "flintlockd_grpc_request_duration_seconds" {
			for _, m := range mf.GetMetric() {
				samples += m.GetHistogram().GetSampleCount()
			}
		}
	}
	if samples != 4 {
		t.Errorf("latency histogram has %d samples, want 4", samples)
	}
	// A second server on the same registry is refused, not silently merged.
	if _, err := New(Config{Store: e.store, Queue: e.queue, Registerer: e.reg}); err == nil {
		t.Error("New registered metrics twice on one registry")
	}
}

// pki is a throwaway CA with a server and a client certificate.
type pki struct {
	dir                       string
	caFile, certFile, keyFile string
	clientCert                tls.Certificate
	roots                     *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{dir: dir, roots: x509.NewCertPool()}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.roots.AddCert(ca)

	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	p.caFile = write("ca.pem", "CERTIFICATE", caDER)
	srvDER, srvKey := issue(2, "server", x509.ExtKeyUsageServerAuth)
	p.certFile = write("server.pem", "CERTIFICATE", srvDER)
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	p.keyFile = write("server-key.pem", "EC PRIVATE KEY", keyDER)
	cliDER, cliKey := issue(3, "client", x509.ExtKeyUsageClientAuth)
	p.clientCert = tls.Certificate{Certificate: [][]byte{cliDER}, PrivateKey: cliKey}
	return p
}

func TestTLS(t *testing.T) {
	p := newPKI(t)
	ctx := ctxT(t)
	call := func(conn *grpc.ClientConn) error {
		_, err := v1alpha1.NewMicroVMClient(conn).ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
		return err
	}

	t.Run("server TLS", func(t *testing.T) {
		cfg, err := TLSConfig(p.certFile, p.keyFile, "")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.MinVersion != tls.VersionTLS13 || cfg.ClientAuth != tls.NoClientCert {
			t.Errorf("MinVersion %x ClientAuth %v", cfg.MinVersion, cfg.ClientAuth)
		}
		e := newEnv(t, envOpts{tls: cfg, clientTC: credentials.NewTLS(&tls.Config{RootCAs: p.roots})})
		if err := call(e.conn); err != nil {
			t.Fatalf("TLS 1.3 client: %v", err)
		}
		old := e.dial(t, credentials.NewTLS(&tls.Config{RootCAs: p.roots, MaxVersion: tls.VersionTLS12}))
		if err := call(old); status.Code(err) != codes.Unavailable {
			t.Errorf("TLS 1.2 client: %v, want refused (Unavailable)", err)
		}
		plain := e.dial(t, insecure.NewCredentials())
		if err := call(plain); status.Code(err) != codes.Unavailable {
			t.Errorf("plaintext client: %v, want refused", err)
		}
		// The refusal is the protocol version, seen directly.
		conn, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: p.roots, MaxVersion: tls.VersionTLS12})
		if err == nil {
			conn.Close()
			t.Error("TLS 1.2 handshake succeeded")
		} else if !strings.Contains(err.Error(), "version") {
			t.Errorf("TLS 1.2 handshake error %q does not name the version", err)
		}
	})

	t.Run("mutual TLS", func(t *testing.T) {
		cfg, err := TLSConfig(p.certFile, p.keyFile, p.caFile)
		if err != nil {
			t.Fatal(err)
		}
		e := newEnv(t, envOpts{tls: cfg, clientTC: credentials.NewTLS(&tls.Config{RootCAs: p.roots, Certificates: []tls.Certificate{p.clientCert}})})
		if err := call(e.conn); err != nil {
			t.Fatalf("client with certificate: %v", err)
		}
		noCert := e.dial(t, credentials.NewTLS(&tls.Config{RootCAs: p.roots}))
		if err := call(noCert); status.Code(err) != codes.Unavailable {
			t.Errorf("client without certificate: %v, want refused", err)
		}
		// Seen directly: under TLS 1.3 the server's refusal arrives after
		// the client's side of the handshake, as an alert on first read.
		conn, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: p.roots, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Errorf("read without client certificate: %v, want the server's \"certificate required\" alert", err)
		}
		// A certificate from another CA is refused as well.
		other := newPKI(t)
		wrong := e.dial(t, credentials.NewTLS(&tls.Config{RootCAs: p.roots, Certificates: []tls.Certificate{other.clientCert}}))
		if err := call(wrong); status.Code(err) != codes.Unavailable {
			t.Errorf("client with foreign certificate: %v, want refused", err)
		}
	})

	t.Run("bad files", func(t *testing.T) {
		if _, err := TLSConfig(filepath.Join(p.dir, "missing.pem"), p.keyFile, ""); err == nil {
			t.Error("missing certificate accepted")
		}
		if _, err := TLSConfig(p.certFile, p.keyFile, p.keyFile); err == nil {
			t.Error("client CA file without certificates accepted")
		}
	})
}

// gatewayEnv serves the gateway over TLS (the gRPC server's rules) with a
// token.
func gatewayEnv(t *testing.T, token string, maxRecv int) (*env, *http.Client, string) {
	t.Helper()
	p := newPKI(t)
	cfg, err := TLSConfig(p.certFile, p.keyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{token: token, maxRecv: maxRecv})
	h, err := e.srv.Gateway()
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(h)
	hs.TLS = cfg
	hs.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	hs.StartTLS()
	t.Cleanup(hs.Close)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.roots}}, Timeout: 10 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	return e, client, hs.URL
}

func doJSON(t *testing.T, c *http.Client, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(token)))
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s %s: %d, body %q is not a JSON object: %v", method, url, resp.StatusCode, data, err)
	}
	return resp.StatusCode, out
}

// dig walks nested JSON objects.
func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func TestGateway(t *testing.T) {
	const token = "gw-token"
	e, c, base := gatewayEnv(t, token, 0)

	// The body is the MicroVMSpec; proto field names are accepted.
	code, out := doJSON(t, c, "POST", base+"/v1alpha1/microvm", token, map[string]any{
		"id":        "web",
		"namespace": "team",
		"labels":    map[string]string{"role": "worker"},
		"kernel":    map[string]any{"image": "liquidmetal/kernel-bin:6.1", "add_network_config": true},
	})
	if code != http.StatusOK {
		t.Fatalf("create: %d %v", code, out)
	}
	uid, _ := dig(out, "microvm", "spec", "uid").(string)
	if _, err := ulid.ParseStrict(uid); err != nil {
		t.Fatalf("create returned uid %q: %v", uid, out)
	}
	// grpc-gateway's default JSON, as upstream emits it: lowerCamelCase
	// names, enums as names, unpopulated fields present.
	for path, want := range map[string]any{
		"microvm.spec.memoryInMb":              float64(1024),
		"microvm.spec.kernel.addNetworkConfig": true,
		"microvm.status.state":                 "PENDING",
		"microvm.spec.allowGuestAgent":         false,
		"microvm.version":                      float64(1),
		"microvm.spec.namespace":               "team",
		"microvm.spec.labels.role":             "worker",
		"microvm.status.retry":                 float64(0),
		"microvm.spec.kernel.image":            "liquidmetal/kernel-bin:6.1",
		"microvm.spec.provider":                "qemu",
		"microvm.spec.vcpu":                    float64(2),
	} {
		if got := dig(out, strings.Split(path, ".")...); got != want {
			t.Errorf("%s = %#v, want %#v", path, got, want)
		}
	}
	if vols, ok := dig(out, "microvm", "spec", "additionalVolumes").([]any); !ok || len(vols) != 0 {
		t.Errorf("unpopulated additionalVolumes not emitted as []: %#v", dig(out, "microvm", "spec"))
	}
	if _, ok := dig(out, "microvm", "spec").(map[string]any)["memory_in_mb"]; ok {
		t.Error("proto field names emitted; the default gateway JSON uses lowerCamelCase")
	}
	if q := e.queue.got(); !slices.Equal(q, []string{uid}) {
		t.Errorf("enqueued %v", q)
	}

	code, out = doJSON(t, c, "GET", base+"/v1alpha1/microvm/"+uid, token, nil)
	if code != http.StatusOK || dig(out, "microvm", "spec", "id") != "web" {
		t.Errorf("get: %d %v", code, out)
	}

	// Lists: all, by namespace, by selector, by name.
	for _, tc := range []struct {
		path string
		n    int
	}{
		{"/v1alpha1/microvms", 1},
		{"/v1alpha1/microvms/team", 1},
		{"/v1alpha1/microvms/other", 0},
		{"/v1alpha1/microvms?label_selector=role%3Dworker", 1},
		{"/v1alpha1/microvms?label_selector=role%3Ddb", 0},
		{"/v1alpha1/microvms/team?name=web", 1},
		{"/v1alpha1/microvms/team?name=nope", 0},
	} {
		code, out := doJSON(t, c, "GET", base+tc.path, token, nil)
		vms, _ := out["microvm"].([]any)
		if code != http.StatusOK || len(vms) != tc.n {
			t.Errorf("GET %s: %d, %d VMs, want %d: %v", tc.path, code, len(vms), tc.n, out)
		}
	}
	code, out = doJSON(t, c, "GET", base+"/v1alpha1/microvms?label_selector=role+in+(", token, nil)
	if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(out["message"]), "label_selector") {
		t.Errorf("bad selector: %d %v", code, out)
	}

	// Errors map to HTTP codes with the gRPC message.
	code, out = doJSON(t, c, "GET", base+"/v1alpha1/microvm/01J0000000000000000000000X", token, nil)
	if code != http.StatusNotFound || !strings.Contains(fmt.Sprint(out["message"]), "not found") {
		t.Errorf("get unknown: %d %v", code, out)
	}
	code, out = doJSON(t, c, "POST", base+"/v1alpha1/microvm", token, map[string]any{"id": "web", "namespace": "team", "kernel": map[string]any{"image": "k:1"}})
	if code != http.StatusConflict {
		t.Errorf("duplicate create: %d %v", code, out)
	}
	code, out = doJSON(t, c, "POST", base+"/v1alpha1/microvm", token, map[string]any{"id": "Bad_Name", "kernel": map[string]any{"image": "k:1"}})
	if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(out["message"]), "microvm.id") {
		t.Errorf("invalid create: %d %v", code, out)
	}

	// Unauthenticated calls are refused, on every route.
	for _, r := range [][2]string{{"GET", "/v1alpha1/microvms"}, {"GET", "/v1alpha1/microvm/" + uid}, {"DELETE", "/v1alpha1/microvm/" + uid}, {"POST", "/v1alpha1/microvm"}} {
		var body any
		if r[0] == "POST" {
			body = map[string]any{"id": "sneaky", "kernel": map[string]any{"image": "k:1"}}
		}
		if code, out := doJSON(t, c, r[0], base+r[1], "", body); code != http.StatusUnauthorized {
			t.Errorf("%s %s without token: %d %v", r[0], r[1], code, out)
		}
		if code, out := doJSON(t, c, r[0], base+r[1], "wrong", body); code != http.StatusUnauthorized {
			t.Errorf("%s %s with wrong token: %d %v", r[0], r[1], code, out)
		}
	}
	if vm, err := e.store.Get(context.Background(), uid); err != nil || vm.GetStatus().GetState() != types.MicroVMStatus_PENDING {
		t.Errorf("refused delete changed the VM: %v %v", vm, err)
	}

	code, out = doJSON(t, c, "DELETE", base+"/v1alpha1/microvm/"+uid, token, nil)
	if code != http.StatusOK {
		t.Fatalf("delete: %d %v", code, out)
	}
	_, out = doJSON(t, c, "GET", base+"/v1alpha1/microvm/"+uid, token, nil)
	if s := dig(out, "microvm", "status", "state"); s != "DELETING" {
		t.Errorf("state after delete = %v", s)
	}
	if code, _ := doJSON(t, c, "DELETE", base+"/v1alpha1/microvm/"+uid, token, nil); code != http.StatusOK {
		t.Errorf("second delete: %d", code)
	}

	// Gateway calls are counted like gRPC calls.
	if n := counterValue(t, e.reg, v1alpha1.MicroVM_DeleteMicroVM_FullMethodName, "Unauthenticated"); n != 2 {
		t.Errorf("refused gateway deletes counted %v, want 2", n)
	}
}

func TestGatewayLimits(t *testing.T) {
	_, c, base := gatewayEnv(t, "", 8<<10)
	big := map[string]any{"id": "big", "kernel": map[string]any{"image": "k:1"},
		"metadata": map[string]string{"user-data": base64.StdEncoding.EncodeToString(make([]byte, 16<<10))}}
	code, out := doJSON(t, c, "POST", base+"/v1alpha1/microvm", "", big)
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d %v", code, out)
	}
	code, out = doJSON(t, c, "POST", base+"/v1alpha1/microvm", "", []byte("{not json"))
	if code != http.StatusBadRequest {
		t.Errorf("malformed body: %d %v", code, out)
	}
	// Without a token configured, no authentication is needed.
	code, out = doJSON(t, c, "POST", base+"/v1alpha1/microvm", "", map[string]any{"id": "ok", "kernel": map[string]any{"image": "k:1"}})
	if code != http.StatusOK {
		t.Errorf("create: %d %v", code, out)
	}
	// The gateway refuses TLS 1.2 like the gRPC port.
	tr := c.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.MaxVersion = tls.VersionTLS12
	old := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	if resp, err := old.Get(base + "/v1alpha1/microvms"); err == nil {
		resp.Body.Close()
		t.Error("TLS 1.2 client served")
	}
}

func BenchmarkCreateParallel(b *testing.B) {
	e := newEnv(b, envOpts{})
	ctx := context.Background()
	var mu sync.Mutex
	n := 0
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			n++
			name := fmt.Sprintf("vm%d", n)
			mu.Unlock()
			if _, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("bench", name, map[string]string{"role": "worker"})}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
}

func BenchmarkList1000(b *testing.B) {
	e := newEnv(b, envOpts{})
	ctx := context.Background()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range 1000 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s := spec(fmt.Sprintf("ns%d", i%4), fmt.Sprintf("vm%04d", i), map[string]string{"role": "worker", "cluster": "c1"})
			s.Metadata = map[string]string{"user-data": base64.StdEncoding.EncodeToString([]byte("#cloud-config\nfinal_message: booted\n"))}
			if _, err := e.client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: s}); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := e.client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{})
		if err != nil || len(resp.GetMicrovm()) != 1000 {
			b.Fatalf("List = %d, %v", len(resp.GetMicrovm()), err)
		}
	}
}
