package framework

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// MgmtPorts is how many consecutive ports from MGMT_PORT_BASE hack/mgmt.sh
// uses.
const MgmtPorts = 43

// MgmtComponents are hack/mgmt.sh's processes (and its log and pid file
// names).
var MgmtComponents = []string{"etcd", "kube-apiserver", "kube-controller-manager",
	"capi-core", "capi-kubeadm-bootstrap", "capi-kubeadm-control-plane", "capmvm"}

// Mgmt drives hack/mgmt.sh for one management cluster of a test: its state
// folder, its ports and the capmvm manager it runs.
type Mgmt struct {
	// Root is the repository, State the cluster's folder (MGMT_DIR).
	Root, State string
	// PortBase is the first of its MgmtPorts loopback ports.
	PortBase int
	// CAPMVM is the capmvm manager binary it runs.
	CAPMVM string
}

// NewMgmt describes a management cluster in state on free loopback ports;
// nothing runs until Run("up").
func NewMgmt(t testing.TB, root, state, capmvm string) *Mgmt {
	t.Helper()
	return &Mgmt{Root: root, State: state, PortBase: FreePortBase(t, MgmtPorts), CAPMVM: capmvm}
}

// Kubeconfig is the cluster's kubeconfig file.
func (m *Mgmt) Kubeconfig() string { return filepath.Join(m.State, "kubeconfig") }

// Run runs hack/mgmt.sh with args (up, down, status) and returns its
// combined output.
func (m *Mgmt) Run(args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{filepath.Join(m.Root, "hack", "mgmt.sh")}, args...)...)
	cmd.Env = append(os.Environ(), "MGMT_DIR="+m.State, "MGMT_PORT_BASE="+strconv.Itoa(m.PortBase), "CAPMVM_BIN="+m.CAPMVM)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Pids are the processes hack/mgmt.sh recorded; a pid file that does not
// hold a number is an error of the test.
func (m *Mgmt) Pids(t testing.TB) []int {
	t.Helper()
	var pids []int
	for _, c := range MgmtComponents {
		b, err := os.ReadFile(filepath.Join(m.State, "run", c+".pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Errorf("%s.pid: %v", c, err)
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// BuildCAPMVM builds cmd/capmvm of the repository at root into dir.
func BuildCAPMVM(t testing.TB, root, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "capmvm")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/capmvm")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/capmvm: %v\n%s", err, out)
	}
	return bin
}

// FreePortBase finds n consecutive free loopback ports from a random
// multiple of 100 between 20000 and 59900.
func FreePortBase(t testing.TB, n int) int {
	t.Helper()
	for range 50 {
		base := 20000 + rand.IntN(400)*100
		free := true
		for p := base; p < base+n && free; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatal("no range of free loopback ports")
	return 0
}

// Alive tells whether pid is a live process (not gone, not a zombie
// waiting for its parent).
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, ok := strings.Cut(string(b), ") ")
	return ok && !strings.HasPrefix(rest, "Z")
}
