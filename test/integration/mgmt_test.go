package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	bootstrapv1 "sigs.k8s.io/cluster-api/api/bootstrap/kubeadm/v1beta2"
	controlplanev1 "sigs.k8s.io/cluster-api/api/controlplane/kubeadm/v1beta2"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// mgmtPorts is how many consecutive ports from MGMT_PORT_BASE
// hack/mgmt.sh uses.
const mgmtPorts = 43

// mgmtComponents are hack/mgmt.sh's processes (and its log names).
var mgmtComponents = []string{"etcd", "kube-apiserver", "kube-controller-manager",
	"capi-core", "capi-kubeadm-bootstrap", "capi-kubeadm-control-plane", "capmvm"}

// mgmtCluster is a management cluster of hack/mgmt.sh, owned by one test.
type mgmtCluster struct {
	root       string // the repository
	state      string // MGMT_DIR
	kubeconfig string
	kubectlBin string
	client     client.Client
}

// startMgmt brings up hack/mgmt.sh's management cluster in a folder of the
// test on free loopback ports, with the capmvm manager built from the tree.
// hack/mgmt.sh down runs when the test ends (after showing the managers'
// logs when it failed) and must leave no process behind.
func startMgmt(t *testing.T, root, scratch string) *mgmtCluster {
	t.Helper()
	kube, err := testenv.KubeAssets(context.Background())
	if err != nil {
		t.Fatalf("Kubernetes %s: %v", testenv.KubeVersion, err)
	}
	if _, err := testenv.CAPIAssets(context.Background()); err != nil {
		t.Fatalf("Cluster API %s: %v", testenv.CAPIVersion, err)
	}
	capmvm := filepath.Join(scratch, "bin", "capmvm")
	build := exec.Command("go", "build", "-o", capmvm, "./cmd/capmvm")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/capmvm: %v\n%s", err, out)
	}

	m := &mgmtCluster{root: root, state: filepath.Join(scratch, "mgmt"), kubectlBin: filepath.Join(kube, "kubectl")}
	m.kubeconfig = filepath.Join(m.state, "kubeconfig")
	base := freePortBase(t)
	run := func(args ...string) (string, error) {
		cmd := exec.Command("bash", append([]string{filepath.Join(root, "hack", "mgmt.sh")}, args...)...)
		cmd.Env = append(os.Environ(), "MGMT_DIR="+m.state, "MGMT_PORT_BASE="+strconv.Itoa(base), "CAPMVM_BIN="+capmvm)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if _, err := os.Stat(m.state); err != nil {
			return
		}
		if t.Failed() {
			for _, c := range mgmtComponents[3:] {
				b, _ := os.ReadFile(filepath.Join(m.state, "logs", c+".log"))
				t.Logf("management cluster: last lines of %s's log:\n%s", c, tail(string(b), 40))
			}
		}
		pids := m.pids()
		if out, err := run("down"); err != nil {
			t.Errorf("mgmt.sh down: %v\n%s", err, out)
		}
		for _, pid := range pids {
			if alive(pid) {
				t.Errorf("management cluster process %d still runs after mgmt.sh down", pid)
			}
		}
	})
	start := time.Now()
	if out, err := run("up"); err != nil {
		t.Fatalf("mgmt.sh up: %v\n%s", err, out)
	}
	t.Logf("management cluster up in %s", time.Since(start).Round(100*time.Millisecond))

	cfg, err := clientcmd.BuildConfigFromFlags("", m.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if m.client, err = client.New(cfg, client.Options{Scheme: newScheme(t)}); err != nil {
		t.Fatal(err)
	}
	return m
}

// newScheme knows the core kinds and those of Cluster API and CAPMVM.
func newScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, clusterv1.AddToScheme,
		controlplanev1.AddToScheme, bootstrapv1.AddToScheme, infrav1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// kubectl runs the cached kubectl against the management cluster.
func (m *mgmtCluster) kubectl(stdin string, args ...string) (string, error) {
	cmd := exec.Command(m.kubectlBin, append([]string{"--kubeconfig", m.kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// pids are the processes hack/mgmt.sh recorded.
func (m *mgmtCluster) pids() []int {
	var pids []int
	for _, c := range mgmtComponents {
		b, err := os.ReadFile(filepath.Join(m.state, "run", c+".pid"))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// freePortBase finds mgmtPorts consecutive free loopback ports.
func freePortBase(t *testing.T) int {
	t.Helper()
	for range 50 {
		base := 20000 + rand.IntN(400)*100
		free := true
		for p := base; p < base+mgmtPorts && free; p++ {
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

// alive tells whether pid is a live process (not gone, not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, ok := strings.Cut(string(b), ") ")
	return ok && !strings.HasPrefix(rest, "Z")
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
