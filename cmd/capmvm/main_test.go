package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/controller"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/controllertest"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/flintlocktest"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestManager runs the manager as main does, with its flags, against a
// real API server and a test double of flintlockd: probes, webhook server,
// metrics (including each controller's concurrency) and a machine
// reconciled to its microVM.
func TestManager(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg, stop, err := controllertest.StartAPIServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})

	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	pki, err := flintlocktest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tls.crt": pki.ServerCert, "tls.key": pki.ServerKey} {
		if err := os.WriteFile(filepath.Join(certDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	health, metrics, hook := freePort(t), freePort(t), freePort(t)
	cmd := newCommand()
	cmd.SetArgs([]string{
		"--kubeconfig", kubeconfig,
		"--concurrency", "3",
		"--watch-filter", "cmdtest",
		"--namespace", "capmvm-cmd",
		"--health-addr", fmt.Sprintf("127.0.0.1:%d", health),
		"--metrics-bind-addr", fmt.Sprintf("127.0.0.1:%d", metrics),
		"--webhook-port", fmt.Sprint(hook),
		"--webhook-cert-dir", certDir,
		"--leader-elect", "--leader-election-namespace", "capmvm-cmd", "--leader-election-id", "capmvm-test",
		"--sync-period", "1m",
		"--host-grace-period", "30s",
		"--log-level", "error",
	})
	mctx, mcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(mctx) }()
	t.Cleanup(func() {
		mcancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the manager did not stop")
		}
	})

	k8s, err := client.New(cfg, client.Options{Scheme: controller.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	ns := "capmvm-cmd"
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}

	testenv.Eventually(t, 60*time.Second, "ready", func() error {
		select {
		case err := <-done:
			t.Fatalf("the manager stopped: %v", err)
		default:
		}
		code, body, err := get(fmt.Sprintf("http://127.0.0.1:%d/readyz", health))
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("readyz: %d %s %v", code, body, err)
		}
		return nil
	})
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", hook), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("webhook server: %v", err)
	}
	conn.Close()

	// A machine of a labelled cluster gets its microVM.
	host, err := flintlocktest.Start(flintlocktest.Options{InitialState: types.MicroVMStatus_CREATED})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(host.Close)
	labels := map[string]string{clusterv1.WatchLabel: "cmdtest", clusterv1.ClusterNameLabel: "c1"}
	cluster := &clusterv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: "c1", Namespace: ns, Labels: labels},
		Spec: clusterv1.ClusterSpec{InfrastructureRef: clusterv1.ContractVersionedObjectReference{
			APIGroup: infrav1.GroupVersion.Group, Kind: "MicrovmCluster", Name: "c1"}},
	}
	must(t, k8s.Create(ctx, cluster))
	base := cluster.DeepCopy()
	cluster.Status.Initialization.InfrastructureProvisioned = ptr.To(true)
	must(t, k8s.Status().Patch(ctx, cluster, client.MergeFrom(base)))
	must(t, k8s.Create(ctx, &infrav1.MicrovmCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "c1", Namespace: ns, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: clusterv1.GroupVersion.String(), Kind: "Cluster", Name: "c1", UID: cluster.UID}}},
		Spec: infrav1.MicrovmClusterSpec{
			ControlPlaneEndpoint: clusterv1.APIEndpoint{Host: "127.0.0.1", Port: int32(freePort(t))},
			Placement:            infrav1.Placement{StaticPool: &infrav1.HostPool{Hosts: []infrav1.Host{{Endpoint: host.Addr()}}}},
		},
	}))
	must(t, k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "m1-data", Namespace: ns},
		Data: map[string][]byte{"value": []byte("#cloud-config\n")}}))
	machine := &clusterv1.Machine{
		ObjectMeta: metav1.ObjectMeta{Name: "m1", Namespace: ns, Labels: labels},
		Spec: clusterv1.MachineSpec{ClusterName: "c1", Bootstrap: clusterv1.Bootstrap{DataSecretName: ptr.To("m1-data")},
			InfrastructureRef: clusterv1.ContractVersionedObjectReference{APIGroup: infrav1.GroupVersion.Group, Kind: "MicrovmMachine", Name: "m1"}},
	}
	must(t, k8s.Create(ctx, machine))
	must(t, k8s.Create(ctx, &infrav1.MicrovmMachine{
		ObjectMeta: metav1.ObjectMeta{Name: "m1", Namespace: ns, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: clusterv1.GroupVersion.String(), Kind: "Machine", Name: "m1", UID: machine.UID}}},
		Spec: infrav1.MicrovmMachineSpec{MicrovmSpec: infrav1.MicrovmSpec{
			VCPU: 1, MemoryMb: 1024,
			RootVolume:        infrav1.Volume{ID: "root", Image: "example.org/node:1"},
			Kernel:            infrav1.ContainerFileSource{Image: "example.org/kernel:1"},
			NetworkInterfaces: []infrav1.NetworkInterface{{GuestDeviceName: "eth0", Type: infrav1.IfaceTypeTap}},
		}},
	}))
	testenv.Eventually(t, 30*time.Second, "machine running", func() error {
		mm := &infrav1.MicrovmMachine{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "m1"}, mm); err != nil {
			return err
		}
		if mm.Spec.ProviderID == "" || !mm.Status.Ready {
			return fmt.Errorf("provider ID %q, status %+v", mm.Spec.ProviderID, mm.Status)
		}
		return nil
	})
	mc := &infrav1.MicrovmCluster{}
	must(t, k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "c1"}, mc))
	if !ptr.Deref(mc.Status.Initialization.Provisioned, false) {
		t.Errorf("MicrovmCluster not provisioned: %+v", mc.Status)
	}

	_, body, err := get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`controller_runtime_max_concurrent_reconciles{controller="microvmmachine"} 3`,
		`controller_runtime_max_concurrent_reconciles{controller="microvmcluster"} 3`,
		"capmvm_host_connections_created_total 1",
		"capmvm_host_connections_open 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--concurrency", "0"},
		{"--log-level", "loud"},
		{"extra-argument"},
	} {
		cmd := newCommand()
		cmd.SetArgs(args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		if err := cmd.ExecuteContext(context.Background()); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}
