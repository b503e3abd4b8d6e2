package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// TestPrivateRegistry: flintlockd started with --registry-config pulls a
// VM's kernel image from a registry that requires authentication. With a
// wrong password in the file the VM ends FAILED, its reason naming the
// image and the 401, leaving nothing behind and quoting no secret; once
// the operator rotates the file, the same daemon boots a VM from it.
func TestPrivateRegistry(t *testing.T) {
	ctx := context.Background()
	user, password := "flint", "pw-"+secretHex(t)
	dir := t.TempDir()
	reg := testenv.NewAuthRegistry(t, user, password)

	// The test kernel, copied into the private registry under two names:
	// one for the refused VM, one for the booted one (a refused pull
	// caches nothing, but a successful one would serve the other name).
	src, err := name.ParseReference(env.Images.Kernel, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(src, remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("read %s: %v", src, err)
	}
	refused, booted := reg.Host+"/private/kernel:refused", reg.Host+"/private/kernel:booted"
	for _, r := range []string{refused, booted} {
		dst, err := name.ParseReference(r, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(dst, img, remote.WithContext(ctx), remote.WithAuth(authn.Anonymous)); err == nil {
			t.Fatal("the registry took an anonymous push: auth is off")
		}
		if err := remote.Write(dst, img, remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: user, Password: password})); err != nil {
			t.Fatalf("push %s: %v", r, err)
		}
	}

	config := filepath.Join(dir, "config.json")
	wrong := "wrong-" + secretHex(t)
	writeRegistryConfig(t, config, reg.Host, user, wrong)
	d := startDaemon(t, "--registry-config", config)

	// Wrong password: FAILED after the retries, with a reason.
	bad := spec("private-refused", "marker-refused")
	bad.Kernel.Image = refused
	resp, err := d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: bad})
	if err != nil {
		t.Fatal(err)
	}
	vm := d.waitState(resp.GetMicrovm().GetSpec().GetUid(), types.MicroVMStatus_FAILED, 2*time.Minute)
	st := vm.GetStatus()
	t.Logf("FAILED as wanted: %s: %s", st.GetFailureReason(), st.GetFailureMessage())
	if st.GetFailureReason() != "KernelFailed" {
		t.Errorf("failure reason %q, want KernelFailed", st.GetFailureReason())
	}
	for _, s := range []string{refused, "registry " + reg.Host, "401", "unauthorized"} {
		if !strings.Contains(st.GetFailureMessage(), s) {
			t.Errorf("failure message does not name %q: %s", s, st.GetFailureMessage())
		}
	}
	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: vm.GetSpec().GetUid()}); err != nil {
		t.Fatal(err)
	}
	d.waitGone(vm.GetSpec().GetUid(), time.Minute)
	d.assertNothingLeft(vm)

	// The operator fixes the file; the running daemon reads it at the
	// next pull.
	writeRegistryConfig(t, config, reg.Host, user, password)
	marker := "marker-private-" + secretHex(t)
	good := spec("private-booted", marker)
	good.Kernel.Image = booted
	resp, err = d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: good})
	if err != nil {
		t.Fatal(err)
	}
	uid := resp.GetMicrovm().GetSpec().GetUid()
	vm = d.waitState(uid, types.MicroVMStatus_CREATED, 2*time.Minute)
	d.waitConsole(vm, marker, bootTimeout)
	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	d.waitGone(uid, time.Minute)
	d.assertNothingLeft(vm)

	logs, err := os.ReadFile(d.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{password, wrong, base64.StdEncoding.EncodeToString([]byte(user + ":" + password))} {
		if strings.Contains(string(logs), secret) {
			t.Errorf("the daemon's log quotes a registry secret")
		}
	}
}

// writeRegistryConfig replaces file, atomically, with a docker config.json
// holding user:password for host.
func writeRegistryConfig(t *testing.T, file, host, user, password string) {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(`{"auths": {"`+host+`": {"auth": "`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

func secretHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
