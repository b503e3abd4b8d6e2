package process

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
)

func TestLookupUser(t *testing.T) {
	u, err := LookupUser("root")
	if err != nil || !u.IsRoot() || u.GID != 0 {
		t.Fatalf("root: %v %v", u, err)
	}
	u, err = LookupUser("64123:64124")
	if err != nil || u.UID != 64123 || u.GID != 64124 || u.IsRoot() {
		t.Fatalf("uid:gid: %v %v", u, err)
	}
	u, err = LookupUser("64123")
	if err != nil || u.UID != 64123 || u.GID != 64123 {
		t.Fatalf("uid: %v %v", u, err)
	}
	if _, err := LookupUser("no-such-user-lm"); !errdefs.IsNotFound(err) {
		t.Fatalf("unknown user: %v", err)
	}
	for _, bad := range []string{"", ":1", "1:"} {
		if _, err := LookupUser(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if c := Root.Credential(5); c != nil {
		t.Errorf("root gets a credential %v", c)
	}
}

// TestGrants runs a process as an unprivileged uid against a VM folder
// deep inside private (0700) folders: it reads what it is granted read,
// writes what it is granted write, and nothing else.
func TestGrants(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root to change owners")
	}
	u := User{Name: "test", UID: 64123, GID: 64123}
	base := t.TempDir()
	if err := os.Chmod(base, 0o700); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "vm", "ns", "name", "uid")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ro, rw, secret := filepath.Join(dir, "kernel"), filepath.Join(dir, "volume.img"), filepath.Join(dir, "secret")
	for _, f := range []string{ro, rw, secret} {
		if err := os.WriteFile(f, []byte("data\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	as := func(script string) error {
		cmd := exec.Command("sh", "-c", script)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.Credential()}
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("%s: %v: %s", script, err, b)
		}
		return err
	}
	if as("cat "+ro) == nil {
		t.Fatal("the user reads the kernel before any grant")
	}
	if err := u.GrantDir(dir); err != nil {
		t.Fatal(err)
	}
	if err := u.GrantRead(ro); err != nil {
		t.Fatal(err)
	}
	if err := u.GrantWrite(rw); err != nil {
		t.Fatal(err)
	}
	pid := filepath.Join(dir, PidFile)
	if err := u.GrantWrite(pid); err != nil {
		t.Fatal(err)
	}
	if err := as("cat " + ro + " && echo more >>" + rw + " && echo 42 >" + pid); err != nil {
		t.Fatalf("granted access fails: %v", err)
	}
	for _, denied := range []string{"echo x >>" + ro, "cat " + secret, "touch " + filepath.Join(dir, "new"), "ls " + base} {
		if as(denied) == nil {
			t.Errorf("%q succeeded as the vmm user", denied)
		}
	}
	if st, _ := os.Stat(base); st.Mode().Perm() != 0o701 {
		t.Errorf("ancestor mode %v, want search only for others", st.Mode().Perm())
	}
}
