package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Boot under TCG takes seconds; the console marker may take a while on a
// loaded two-core machine.
const bootTimeout = 3 * time.Minute

// TestCreateBootDelete: a VM created through gRPC boots the test kernel and
// root image and prints the marker sent in its user-data; deleting it leaves
// nothing behind.
func TestCreateBootDelete(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	marker := fmt.Sprintf("marker-grpc-%d", time.Now().UnixNano())
	resp, err := d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("grpc", marker)})
	if err != nil {
		t.Fatal(err)
	}
	vm := resp.GetMicrovm()
	uid := vm.GetSpec().GetUid()
	if uid == "" || vm.GetStatus().GetState() != types.MicroVMStatus_PENDING {
		t.Fatalf("create returned uid %q state %s", uid, vm.GetStatus().GetState())
	}
	vm = d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
	if vm.GetStatus().GetKernelMount().GetSource() == "" || vm.GetStatus().GetVolumes()["root"] == nil {
		t.Errorf("status lacks kernel or root volume: %v", vm.GetStatus())
	}
	if got := vmmProcesses(uid); len(got) != 1 {
		t.Fatalf("want one VMM process, got %v", got)
	}
	d.waitConsole(vm, "LIQUIDMETAL-GUEST: booted", bootTimeout)
	d.waitConsole(vm, marker, bootTimeout)

	// Labels are stored and filter List.
	list, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{Namespace: "e2e", LabelSelector: "suite=e2e"})
	if err != nil || len(list.GetMicrovm()) != 1 {
		t.Fatalf("list by label: %v %v", list, err)
	}
	list, err = d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{LabelSelector: "suite=other"})
	if err != nil || len(list.GetMicrovm()) != 0 {
		t.Fatalf("list by other label: %v %v", list, err)
	}

	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	d.waitGone(uid, time.Minute)
	d.assertNothingLeft(vm)
}

// TestHTTPGateway drives the same life cycle with JSON over HTTP.
func TestHTTPGateway(t *testing.T) {
	d := startDaemon(t)
	marker := fmt.Sprintf("marker-http-%d", time.Now().UnixNano())
	body, err := protojson.Marshal(spec("http", marker))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + d.HTTPAddr + "/v1alpha1"
	resp, err := http.Post(base+"/microvm", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST: %s %s", resp.Status, b)
	}
	var created struct {
		Microvm struct {
			Spec struct {
				Uid string `json:"uid"`
			} `json:"spec"`
		} `json:"microvm"`
	}
	if err := json.Unmarshal(b, &created); err != nil || created.Microvm.Spec.Uid == "" {
		t.Fatalf("POST answer %s: %v", b, err)
	}
	uid := created.Microvm.Spec.Uid
	vm := d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
	d.waitConsole(vm, marker, bootTimeout)

	resp, err = http.Get(base + "/microvm/" + uid)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"CREATED"`) {
		t.Fatalf("GET: %s %s", resp.Status, b)
	}
	resp, err = http.Get(base + "/microvms/e2e")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), uid) {
		t.Fatalf("GET list: %s %s", resp.Status, b)
	}
	resp, err = http.Get(base + "/microvm/01ARZ3NDEKTSV4RRFFQ69G5FAV")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET unknown uid: %s, want 404", resp.Status)
	}
	req, _ := http.NewRequest(http.MethodDelete, base+"/microvm/"+uid, nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE: %s", resp.Status)
	}
	d.waitGone(uid, time.Minute)
	d.assertNothingLeft(vm)
}

// TestFLCommandLine drives the life cycle with the fl binary.
func TestFLCommandLine(t *testing.T) {
	d := startDaemon(t)
	marker := fmt.Sprintf("marker-fl-%d", time.Now().UnixNano())
	ud := t.TempDir() + "/user-data"
	if err := os.WriteFile(ud, []byte("#!/bin/sh\necho "+marker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(env.FL, append([]string{"--insecure", "--address", d.GRPCAddr}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("fl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := fl("microvm", "create", "--name", "cli", "--namespace", "e2e", "--vcpu", "1", "--memory", "256",
		"--kernel-image", env.Images.Kernel, "--initrd-image", env.Images.Initrd, "--root-image", env.Images.Root,
		"--user-data-file", ud, "-o", "json")
	var created types.MicroVM
	if err := protojson.Unmarshal([]byte(out), &created); err != nil {
		t.Fatalf("fl create -o json: %v\n%s", err, out)
	}
	uid := created.GetSpec().GetUid()
	fl("microvm", "wait", uid, "--timeout", "2m")
	vm := d.waitState(uid, types.MicroVMStatus_CREATED, time.Second)
	d.waitConsole(vm, marker, bootTimeout)
	if out := fl("microvm", "list", "--namespace", "e2e"); !strings.Contains(out, uid) || !strings.Contains(out, "CREATED") {
		t.Fatalf("fl list:\n%s", out)
	}
	if out := fl("microvm", "console", uid, "--state-dir", d.StateDir); !strings.Contains(out, marker) {
		t.Fatalf("fl console lacks the marker:\n%s", tail(out, 20))
	}
	fl("microvm", "delete", uid, "--wait")
	d.waitGone(uid, time.Second)
	d.assertNothingLeft(vm)
}

// TestKillDuringCreate: flintlockd killed with SIGKILL in the middle of a
// create, then restarted, ends with the VM CREATED exactly once.
func TestKillDuringCreate(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	resp, err := d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("crash", "marker-crash")})
	if err != nil {
		t.Fatal(err)
	}
	vm := resp.GetMicrovm()
	uid := vm.GetSpec().GetUid()
	// Kill as soon as the create is under way: its folder exists.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(d.vmDir(vm)); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	d.kill()
	d.start()
	vm = d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
	// A restarted daemon must re-adopt, never duplicate.
	d.kill()
	d.start()
	d.waitState(uid, types.MicroVMStatus_CREATED, time.Minute)
	time.Sleep(time.Second) // give a wrong second start time to show
	if pids := vmmProcesses(uid); len(pids) != 1 {
		t.Fatalf("want exactly one VMM process, got %v", pids)
	}
	list, err := d.Client.ListMicroVMs(ctx, &v1alpha1.ListMicroVMsRequest{Namespace: "e2e"})
	if err != nil || len(list.GetMicrovm()) != 1 {
		t.Fatalf("want one VM listed, got %v (%v)", list, err)
	}
	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	d.waitGone(uid, time.Minute)
	d.assertNothingLeft(vm)
}

// TestMissingImage: a kernel image that does not exist ends FAILED with a
// reason naming it, and leaks nothing.
func TestMissingImage(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	s := spec("missing", "x")
	s.Kernel.Image = env.Registry.Host + "/liquidmetal/no-such-kernel:v0"
	resp, err := d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: s})
	if err != nil {
		t.Fatal(err)
	}
	uid := resp.GetMicrovm().GetSpec().GetUid()
	var vm *types.MicroVM
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		got, err := d.Client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetMicrovm().GetStatus().GetState() == types.MicroVMStatus_FAILED {
			vm = got.GetMicrovm()
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if vm == nil {
		t.Fatal("VM with a missing kernel image did not end FAILED")
	}
	if msg := vm.GetStatus().GetFailureMessage(); !strings.Contains(msg, "no-such-kernel") {
		t.Errorf("failure message does not name the image: %q", msg)
	}
	if vm.GetStatus().GetFailureReason() == "" {
		t.Error("no failure reason")
	}
	if pids := vmmProcesses(uid); len(pids) > 0 {
		t.Errorf("a VMM runs for a failed VM: %v", pids)
	}
	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	d.waitGone(uid, time.Minute)
	d.assertNothingLeft(vm)
}

// TestAPIErrors checks the codes clients rely on, over the wire.
func TestAPIErrors(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	_, err := d.Client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: "01ARZ3NDEKTSV4RRFFQ69G5FAV"})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "not found") {
		t.Errorf("get unknown: %v", err)
	}
	s := spec("bad", "x")
	s.Interfaces = []*types.NetworkInterface{{DeviceId: "eth0", GuestMac: strPtr("zz:00")}}
	_, err = d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: s})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "microvm.interfaces[0].guest_mac") {
		t.Errorf("bad mac: %v", err)
	}
	s = spec("../escape", "x")
	_, err = d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: s})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "microvm.id") {
		t.Errorf("path escape: %v", err)
	}
	s = spec("dup", "x")
	s.Kernel.Image = env.Registry.Host + "/liquidmetal/no-such-kernel:v0"
	if _, err := d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: s}); err != nil {
		t.Fatal(err)
	}
	_, err = d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("dup", "x")})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("duplicate: %v", err)
	}
	big := spec("big", "x")
	big.Metadata["user-data"] = strings.Repeat("A", 5<<20)
	_, err = d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: big})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized: %v", err)
	}
}

func strPtr(s string) *string { return &s }
