package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// mgmtCluster is a management cluster of hack/mgmt.sh, owned by one test.
type mgmtCluster struct {
	*framework.Mgmt
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
	capmvm := framework.BuildCAPMVM(t, root, filepath.Join(scratch, "bin"))

	m := &mgmtCluster{
		Mgmt:       framework.NewMgmt(t, root, filepath.Join(scratch, "mgmt"), capmvm),
		kubectlBin: filepath.Join(kube, "kubectl"),
	}
	m.kubeconfig = m.Kubeconfig()
	run := m.Run
	t.Cleanup(func() {
		if _, err := os.Stat(m.State); err != nil {
			return
		}
		if t.Failed() {
			for _, c := range framework.MgmtComponents[3:] {
				b, _ := os.ReadFile(filepath.Join(m.State, "logs", c+".log"))
				t.Logf("management cluster: last lines of %s's log:\n%s", c, framework.Tail(string(b), 40))
			}
		}
		pids := m.Pids(t)
		if out, err := run("down"); err != nil {
			t.Errorf("mgmt.sh down: %v\n%s", err, out)
		}
		for _, pid := range pids {
			if framework.Alive(pid) {
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
