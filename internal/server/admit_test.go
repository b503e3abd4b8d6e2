package server

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/store"
)

// Config.Admit sees the spec with defaults applied; its refusal is the
// RPC's error (FailedPrecondition) and nothing is stored or queued.
func TestCreateAdmit(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	q := &fakeQueue{}
	var seen []string
	srv, err := New(Config{
		Store: st, Queue: q, Providers: []string{"qemu", "firecracker"}, DefaultProvider: "qemu",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Admit: func(spec *types.MicroVMSpec) error {
			seen = append(seen, spec.GetProvider())
			if spec.GetProvider() == "firecracker" && spec.GetAllowGuestAgent() {
				return fmt.Errorf("provider %q does not support a guest agent: %w", spec.GetProvider(), errdefs.ErrFailedPrecondition)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)

	refused := spec("ns", "refused", nil)
	refused.Provider = new("firecracker")
	refused.AllowGuestAgent = true
	_, err = srv.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: refused})
	wantCode(t, err, codes.FailedPrecondition, `provider "firecracker" does not support a guest agent`)
	if vms, err := st.List(ctx, "", nil); err != nil || len(vms) != 0 || len(q.got()) != 0 {
		t.Fatalf("a refused VM was stored (%d, %v) or queued (%v)", len(vms), err, q.got())
	}

	// Defaults come first: Admit sees the default provider.
	resp, err := srv.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec("ns", "ok", nil)})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[1] != "qemu" || len(q.got()) != 1 || q.got()[0] != resp.GetMicrovm().GetSpec().GetUid() {
		t.Fatalf("admit saw providers %v; queue %v", seen, q.got())
	}

	// An invalid spec never reaches Admit.
	_, err = srv.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: &types.MicroVMSpec{Id: "x"}})
	wantCode(t, err, codes.InvalidArgument, "kernel")
	if len(seen) != 2 {
		t.Fatalf("admit called for an invalid spec: %v", seen)
	}
}
