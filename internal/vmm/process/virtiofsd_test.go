package process

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

func TestVirtiofsdArgsAndUID(t *testing.T) {
	sock := "/state/vm/ns/n/01ABC/" + VirtiofsSocketName("01ABC", 2)
	argv := VirtiofsdArgs("/usr/lib/qemu/virtiofsd", sock, vmm.SharedDir{Tag: "t", HostPath: "/srv/x"})
	want := []string{"/usr/lib/qemu/virtiofsd", "--socket-path=" + sock, "-o", "source=/srv/x", "-o", "cache=auto"}
	if !slices.Equal(argv, want) {
		t.Errorf("args %q, want %q", argv, want)
	}
	ro := VirtiofsdArgs("virtiofsd", "s", vmm.SharedDir{HostPath: "/srv/x", ReadOnly: true})
	if ro[len(ro)-1] != "--readonly" {
		t.Errorf("read-only args %q", ro)
	}
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{argv, "01ABC"},
		{[]string{"virtiofsd", "--socket-path=" + VirtiofsSocketName("a-b_c", 0)}, "a-b_c"}, // relative, uid with '-'
		{[]string{"qemu-system-x86_64", "--socket-path=" + sock}, ""},
		{[]string{"virtiofsd", "--socket-path=/run/other.sock"}, ""},
		{[]string{"virtiofsd", "-o", "source=/x"}, ""},
		{nil, ""},
	} {
		if got := VirtiofsdUID(tc.argv); got != tc.want {
			t.Errorf("VirtiofsdUID(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

// A socket listens once ListenUnix returns; a file that is not a
// listening socket does not count.
func TestWaitListening(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.sock")
	if ok, err := unixListening(path); err != nil || ok {
		t.Fatalf("before listen: %v, %v", ok, err)
	}
	f, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := waitListening(ctx, path, nil); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	close(exited)
	if err := waitListening(ctx, path+".other", exited); err == nil {
		t.Error("a missing socket listened")
	}
}
