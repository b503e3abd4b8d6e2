package server

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	powerv1 "github.com/liquidmetal-go/liquidmetal/api/services/power/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

type powerEnv struct {
	srv      *Server
	store    *store.Store
	queue    *fakeQueue
	stateDir string
	vms      v1alpha1.MicroVMClient
	power    powerv1.PowerServiceClient
}

// newPowerEnv runs a real gRPC server on loopback over a real store, with
// a state folder for consoles.
func newPowerEnv(t *testing.T, token string) *powerEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	q := &fakeQueue{}
	srv, err := New(Config{
		Store: st, Queue: q, Providers: []string{"qemu"}, DefaultProvider: "qemu",
		Token: token, Registerer: prometheus.NewRegistry(), StateDir: dir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.power.consolePoll = 10 * time.Millisecond
	t.Cleanup(srv.Close)
	gs := srv.GRPCServer(nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &powerEnv{srv: srv, store: st, queue: q, stateDir: dir,
		vms: v1alpha1.NewMicroVMClient(conn), power: powerv1.NewPowerServiceClient(conn)}
}

// created creates a VM through the API and marks it CREATED as the
// reconciler would.
func (e *powerEnv) created(t *testing.T, ctx context.Context, ns, name string) *types.MicroVM {
	t.Helper()
	resp, err := e.vms.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec(ns, name, nil)})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := e.store.Update(ctx, resp.GetMicrovm().GetSpec().GetUid(), func(vm *types.MicroVM) error {
		vm.Status.State = types.MicroVMStatus_CREATED
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func (e *powerEnv) setStatus(t *testing.T, ctx context.Context, uid string, fn func(st *types.MicroVMStatus)) {
	t.Helper()
	if _, err := e.store.Update(ctx, uid, func(vm *types.MicroVM) error { fn(vm.Status); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestPowerOperations(t *testing.T) {
	e := newPowerEnv(t, "")
	ctx := ctxT(t)
	vm := e.created(t, ctx, "ns", "vm1")
	uid := vm.GetSpec().GetUid()

	// Bad requests.
	_, err := e.power.StopMicroVM(ctx, &powerv1.StopMicroVMRequest{})
	wantCode(t, err, codes.InvalidArgument, "uid")
	_, err = e.power.StopMicroVM(ctx, &powerv1.StopMicroVMRequest{Uid: "01NOSUCHVM"})
	wantCode(t, err, codes.NotFound, "01NOSUCHVM")
	_, err = e.power.StartMicroVM(ctx, &powerv1.StartMicroVMRequest{Uid: "01NOSUCHVM"})
	wantCode(t, err, codes.NotFound, "")
	_, err = e.power.RestartMicroVM(ctx, &powerv1.RestartMicroVMRequest{Uid: "01NOSUCHVM"})
	wantCode(t, err, codes.NotFound, "")
	_, err = e.power.StopMicroVM(ctx, &powerv1.StopMicroVMRequest{Uid: uid, Timeout: durationpb.New(-time.Second)})
	wantCode(t, err, codes.InvalidArgument, "timeout")
	// A running VM cannot be started.
	_, err = e.power.StartMicroVM(ctx, &powerv1.StartMicroVMRequest{Uid: uid})
	wantCode(t, err, codes.FailedPrecondition, "not stopped")

	// Stop records the request and queues the VM.
	before := len(e.queue.got())
	resp, err := e.power.StopMicroVM(ctx, &powerv1.StopMicroVMRequest{Uid: uid, Timeout: durationpb.New(3 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	pw := resp.GetMicrovm().GetSpec().GetPower()
	if !pw.GetStopped() || pw.GetStopTimeout().AsDuration() != 3*time.Second {
		t.Errorf("power after stop: %v", pw)
	}
	if got := e.queue.got(); len(got) != before+1 || got[len(got)-1] != uid {
		t.Errorf("queued %v", got)
	}
	// Stopping a stopped VM, restarting it: FailedPrecondition.
	_, err = e.power.StopMicroVM(ctx, &powerv1.StopMicroVMRequest{Uid: uid})
	wantCode(t, err, codes.FailedPrecondition, "stopped already")
	_, err = e.power.RestartMicroVM(ctx, &powerv1.RestartMicroVMRequest{Uid: uid})
	wantCode(t, err, codes.FailedPrecondition, "start it instead")

	// The reconciler reports it STOPPED; v1alpha1 still says CREATED.
	e.setStatus(t, ctx, uid, func(st *types.MicroVMStatus) { st.DetailedState = types.MicroVMStatus_STOPPED })
	got, err := e.vms.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
	if err != nil {
		t.Fatal(err)
	}
	if s := got.GetMicrovm().GetStatus(); s.GetState() != types.MicroVMStatus_CREATED || s.GetDetailedState() != types.MicroVMStatus_STOPPED {
		t.Errorf("stopped VM: state %v detailed %v", s.GetState(), s.GetDetailedState())
	}

	// Start clears the request.
	sresp, err := e.power.StartMicroVM(ctx, &powerv1.StartMicroVMRequest{Uid: uid})
	if err != nil || sresp.GetMicrovm().GetSpec().GetPower().GetStopped() {
		t.Fatalf("start: %v %v", sresp, err)
	}
	// Restart bumps the generation each time.
	for i := int64(1); i <= 2; i++ {
		r, err := e.power.RestartMicroVM(ctx, &powerv1.RestartMicroVMRequest{Uid: uid})
		if err != nil || r.GetMicrovm().GetSpec().GetPower().GetRestartGeneration() != i {
			t.Fatalf("restart %d: %v %v", i, r.GetMicrovm().GetSpec().GetPower(), err)
		}
	}

	// A PENDING VM and a VM being deleted refuse power operations.
	pending, err := e.vms.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("ns", "vm2", nil)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.power.StopMicroVM(ctx, &powerv1.StopMicroVMRequest{Uid: pending.GetMicrovm().GetSpec().GetUid()})
	wantCode(t, err, codes.FailedPrecondition, "PENDING")
	if _, err := e.vms.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	_, err = e.power.StopMicroVM(ctx, &powerv1.StopMicroVMRequest{Uid: uid})
	wantCode(t, err, codes.FailedPrecondition, "being deleted")

	// A power request in a create is ignored: the server owns it.
	sp := spec("ns", "vm3", nil)
	sp.Power = &types.MicroVMPower{Stopped: true}
	c, err := e.vms.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: sp})
	if err != nil || c.GetMicrovm().GetSpec().GetPower() != nil {
		t.Fatalf("create with power: %v %v", c.GetMicrovm().GetSpec().GetPower(), err)
	}
}

// TestWatchMicroVMs: the watch starts with a snapshot and then reports
// every state change, creation and removal in order, only in its
// namespace.
func TestWatchMicroVMs(t *testing.T) {
	e := newPowerEnv(t, "")
	ctx := ctxT(t)
	pre := e.created(t, ctx, "ns", "pre")

	w, err := e.power.WatchMicroVMs(ctx, &powerv1.WatchMicroVMsRequest{Namespace: "ns"})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() *powerv1.WatchMicroVMsResponse {
		t.Helper()
		ev, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	ev := recv()
	if ev.GetType() != powerv1.WatchMicroVMsResponse_SNAPSHOT || ev.GetUid() != pre.GetSpec().GetUid() ||
		ev.GetNewState() != types.MicroVMStatus_RUNNING || ev.GetName() != "pre" {
		t.Fatalf("snapshot event %v", ev)
	}
	if ev := recv(); ev.GetType() != powerv1.WatchMicroVMsResponse_SYNCED {
		t.Fatalf("want SYNCED, got %v", ev)
	}

	// Another namespace is not reported.
	e.created(t, ctx, "other", "x")
	vm := e.created(t, ctx, "ns", "vm")
	uid := vm.GetSpec().GetUid()
	e.setStatus(t, ctx, uid, func(st *types.MicroVMStatus) { st.Retry++ }) // no state change
	e.setStatus(t, ctx, uid, func(st *types.MicroVMStatus) { st.DetailedState = types.MicroVMStatus_STOPPED })
	e.setStatus(t, ctx, uid, func(st *types.MicroVMStatus) { st.DetailedState = types.MicroVMStatus_RUNNING })
	if _, err := e.vms.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Delete(ctx, uid); err != nil {
		t.Fatal(err)
	}
	type step struct {
		typ      powerv1.WatchMicroVMsResponse_EventType
		old, new types.MicroVMStatus_MicroVMState
	}
	want := []step{
		{powerv1.WatchMicroVMsResponse_ADDED, types.MicroVMStatus_PENDING, types.MicroVMStatus_PENDING},
		{powerv1.WatchMicroVMsResponse_CHANGED, types.MicroVMStatus_PENDING, types.MicroVMStatus_RUNNING},
		{powerv1.WatchMicroVMsResponse_CHANGED, types.MicroVMStatus_RUNNING, types.MicroVMStatus_STOPPED},
		{powerv1.WatchMicroVMsResponse_CHANGED, types.MicroVMStatus_STOPPED, types.MicroVMStatus_RUNNING},
		{powerv1.WatchMicroVMsResponse_CHANGED, types.MicroVMStatus_RUNNING, types.MicroVMStatus_DELETING},
		{powerv1.WatchMicroVMsResponse_REMOVED, types.MicroVMStatus_DELETING, types.MicroVMStatus_DELETING},
	}
	var lastVersion int32
	for i, w := range want {
		ev := recv()
		if ev.GetUid() != uid || ev.GetNamespace() != "ns" {
			t.Fatalf("event %d is of %s/%s: %v", i, ev.GetNamespace(), ev.GetUid(), ev)
		}
		if ev.GetType() != w.typ || ev.GetOldState() != w.old || ev.GetNewState() != w.new {
			t.Fatalf("event %d: %v %v->%v, want %v %v->%v", i, ev.GetType(), ev.GetOldState(), ev.GetNewState(), w.typ, w.old, w.new)
		}
		if ev.GetVersion() < lastVersion || ev.GetTime() == nil {
			t.Errorf("event %d: version %d after %d, time %v", i, ev.GetVersion(), lastVersion, ev.GetTime())
		}
		lastVersion = ev.GetVersion()
	}
}

// writeConsole appends to the console of vm in the state folder.
func (e *powerEnv) writeConsole(t *testing.T, vm *types.MicroVM, text string) {
	t.Helper()
	dir, err := vmFolder(e.stateDir, vm.GetSpec())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "console.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

func TestConsole(t *testing.T) {
	e := newPowerEnv(t, "")
	ctx := ctxT(t)
	vm := e.created(t, ctx, "ns", "con")
	uid := vm.GetSpec().GetUid()

	_, err := e.power.GetConsole(ctx, &powerv1.GetConsoleRequest{Uid: "01NOSUCHVM"})
	wantCode(t, err, codes.NotFound, "")
	_, err = e.power.GetConsole(ctx, &powerv1.GetConsoleRequest{Uid: uid, MaxBytes: -1})
	wantCode(t, err, codes.InvalidArgument, "max_bytes")
	s, err := e.power.StreamConsole(ctx, &powerv1.StreamConsoleRequest{Uid: "01NOSUCHVM"})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.NotFound, "")

	// No console yet: empty.
	r, err := e.power.GetConsole(ctx, &powerv1.GetConsoleRequest{Uid: uid})
	if err != nil || len(r.GetData()) != 0 || r.GetEndOffset() != 0 {
		t.Fatalf("empty console: %v %v", r, err)
	}
	e.writeConsole(t, vm, "hello console\n")
	r, err = e.power.GetConsole(ctx, &powerv1.GetConsoleRequest{Uid: uid, Offset: 6, MaxBytes: 4})
	if err != nil || string(r.GetData()) != "cons" || r.GetOffset() != 6 || r.GetNextOffset() != 10 || r.GetEndOffset() != 14 {
		t.Fatalf("GetConsole(6, 4) = %v %v", r, err)
	}
	r, err = e.power.GetConsole(ctx, &powerv1.GetConsoleRequest{Uid: uid, Offset: -8})
	if err != nil || string(r.GetData()) != "console\n" || r.GetOffset() != 6 {
		t.Fatalf("GetConsole(-8) = %v %v", r, err)
	}

	// Without follow the stream ends at the end of the output.
	s, err = e.power.StreamConsole(ctx, &powerv1.StreamConsoleRequest{Uid: uid})
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for {
		c, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, c.GetData()...)
	}
	if string(all) != "hello console\n" {
		t.Fatalf("stream without follow: %q", all)
	}

	// With follow new output arrives as it is written, and the stream
	// ends once the VM is gone.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err = e.power.StreamConsole(fctx, &powerv1.StreamConsoleRequest{Uid: uid, Offset: 6, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	next := int64(6)
	read := func(want string) {
		t.Helper()
		for !strings.Contains(got.String(), want) {
			c, err := s.Recv()
			if err != nil {
				t.Fatalf("waiting for %q (have %q): %v", want, got.String(), err)
			}
			if c.GetOffset() != next {
				t.Fatalf("chunk at %d, want %d", c.GetOffset(), next)
			}
			next += int64(len(c.GetData()))
			got.Write(c.GetData())
		}
	}
	read("console\n")
	e.writeConsole(t, vm, "more output\n")
	read("more output\n")
	if err := e.store.Delete(ctx, uid); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Recv()
		done <- err
	}()
	select {
	case err := <-done:
		if err != io.EOF {
			t.Fatalf("after delete: %v, want the end of the stream", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the followed stream did not end after the VM was deleted")
	}
}

// TestPowerGateway: the power routes over HTTP/JSON, the streaming ones
// included, with the same authentication as gRPC.
func TestPowerGateway(t *testing.T) {
	e := newPowerEnv(t, "s3cret")
	ctx := withToken(ctxT(t), "Basic", "s3cret")
	// In process: the test's gRPC client carries no token.
	vmResp, err := e.srv.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("ns", "gw", nil)})
	if err != nil {
		t.Fatal(err)
	}
	uid := vmResp.GetMicrovm().GetSpec().GetUid()
	e.setStatus(t, ctx, uid, func(st *types.MicroVMStatus) { st.State = types.MicroVMStatus_CREATED })
	vm, _ := e.store.Get(ctx, uid)
	e.writeConsole(t, vm, "line one\nline two\n")

	h, err := e.srv.Gateway()
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	do := func(method, path, body string, auth bool) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, hs.URL+path, strings.NewReader(body))
		if auth {
			req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("s3cret")))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	if resp := do("POST", "/v1alpha1/microvm/"+uid+"/stop", `{"timeout":"2s"}`, false); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stop without token: %s", resp.Status)
	}
	resp := do("POST", "/v1alpha1/microvm/"+uid+"/stop", `{"timeout":"2s"}`, true)
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"stopped":true`) {
		t.Fatalf("stop: %s %s", resp.Status, b)
	}
	resp = do("POST", "/v1alpha1/microvm/"+uid+"/stop", `{}`, true)
	if resp.StatusCode != http.StatusBadRequest { // FailedPrecondition
		t.Fatalf("second stop: %s", resp.Status)
	}

	// The streamed console: one JSON object per chunk.
	resp = do("GET", "/v1alpha1/microvm/"+uid+"/console/stream?offset=5", "", true)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("console stream: %s", resp.Status)
	}
	var data []byte
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var msg struct {
			Result struct {
				Offset string `json:"offset"`
				Data   []byte `json:"data"`
			} `json:"result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			t.Fatalf("stream line %q: %v", sc.Text(), err)
		}
		data = append(data, msg.Result.Data...)
	}
	if string(data) != "one\nline two\n" {
		t.Fatalf("streamed console %q", data)
	}

	// The streamed watch: the snapshot, then SYNCED.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, _ := http.NewRequestWithContext(wctx, "GET", hs.URL+"/v1alpha1/watch/microvms?namespace=ns", nil)
	req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("s3cret")))
	wresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer wresp.Body.Close()
	sc = bufio.NewScanner(wresp.Body)
	var types_ []string
	for len(types_) < 2 && sc.Scan() {
		var msg struct {
			Result struct {
				Type     string `json:"type"`
				Uid      string `json:"uid"`
				NewState string `json:"newState"`
			} `json:"result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			t.Fatal(err)
		}
		types_ = append(types_, msg.Result.Type+":"+msg.Result.NewState)
	}
	if !slices.Equal(types_, []string{"SNAPSHOT:RUNNING", "SYNCED:PENDING"}) {
		t.Fatalf("watch over HTTP: %v", types_)
	}
}
