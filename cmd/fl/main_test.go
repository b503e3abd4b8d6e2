package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// TestMain lets the test binary act as fl itself, so the tests check the
// real process: exit status and stderr.
func TestMain(m *testing.M) {
	if os.Getenv("FL_TEST_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// stateDaemon is a test double of flintlockd whose every microVM is in one
// fixed state.
type stateDaemon struct {
	v1alpha1.UnimplementedMicroVMServer
	status *types.MicroVMStatus
}

func (d *stateDaemon) GetMicroVM(_ context.Context, req *v1alpha1.GetMicroVMRequest) (*v1alpha1.GetMicroVMResponse, error) {
	if req.Uid != "01UID" {
		return nil, status.Errorf(codes.NotFound, "microvm %s not found", req.Uid)
	}
	return &v1alpha1.GetMicroVMResponse{Microvm: &types.MicroVM{
		Spec:   &types.MicroVMSpec{Id: "vm", Namespace: "default", Uid: proto.String(req.Uid)},
		Status: d.status,
	}}, nil
}

func serve(t *testing.T, st *types.MicroVMStatus) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	v1alpha1.RegisterMicroVMServer(srv, &stateDaemon{status: st})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// runFL runs this test binary as fl and returns stdout, stderr and the exit
// code.
func runFL(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "FL_TEST_RUN_MAIN=1")
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errOut.String(), 0
	case errors.As(err, &exit):
		return out.String(), errOut.String(), exit.ExitCode()
	}
	t.Fatal(err)
	return "", "", -1
}

func TestExitStatus(t *testing.T) {
	failed := serve(t, &types.MicroVMStatus{State: types.MicroVMStatus_FAILED,
		FailureReason: "KernelPanic", FailureMessage: "VFS: unable to mount root fs"})
	out, errOut, code := runFL(t, "--insecure", "--address", failed, "microvm", "wait", "01UID")
	if code == 0 {
		t.Fatalf("wait on a FAILED VM exited 0\n%s", out)
	}
	if !strings.Contains(errOut, "KernelPanic: VFS: unable to mount root fs") || !strings.Contains(out, "FAILED") {
		t.Fatalf("stdout %q stderr %q", out, errOut)
	}

	created := serve(t, &types.MicroVMStatus{State: types.MicroVMStatus_CREATED})
	if out, errOut, code := runFL(t, "--insecure", "--address", created, "wait", "01UID"); code != 0 || !strings.Contains(out, "CREATED") {
		t.Fatalf("exit %d stdout %q stderr %q", code, out, errOut)
	}

	// Usage errors and server errors exit non-zero too.
	if _, errOut, code := runFL(t, "--insecure", "--address", created, "get"); code == 0 || !strings.Contains(errOut, "arg") {
		t.Fatalf("get without uid: exit %d stderr %q", code, errOut)
	}
	if _, errOut, code := runFL(t, "--insecure", "--address", created, "get", "other"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("get unknown: exit %d stderr %q", code, errOut)
	}
}
