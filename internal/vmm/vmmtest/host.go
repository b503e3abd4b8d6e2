package vmmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Run runs a host command and returns its trimmed output; it fails the
// test when the command fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// HostLink creates the host network device name with ip(8) (args are
// ip's) and deletes it when the test ends.
func HostLink(t testing.TB, name string, args ...string) {
	t.Helper()
	Run(t, "ip", args...)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", name).Run() })
}

// SysNet reads attribute attr of network device dev from sysfs.
func SysNet(t testing.TB, dev, attr string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/class/net", dev, attr))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// ProcIDs returns the real uid and gid of process pid.
func ProcIDs(t testing.TB, pid int) (uid, gid string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			uid = strings.Fields(v)[0]
		}
		if v, ok := strings.CutPrefix(line, "Gid:"); ok {
			gid = strings.Fields(v)[0]
		}
	}
	return uid, gid
}
