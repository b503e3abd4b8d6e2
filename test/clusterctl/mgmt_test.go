package clusterctl_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	controlplanev1 "sigs.k8s.io/cluster-api/api/controlplane/kubeadm/v1beta2"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// TestManagementCluster brings up the management cluster of hack/mgmt.sh in
// a temporary folder on free ports, checks that every manager is healthy,
// that the Cluster API and CAPMVM APIs are served with their webhooks on
// loopback, that the seed's clusterctl command works against it and its
// cluster is accepted, and that down stops everything.
func TestManagementCluster(t *testing.T) {
	root := repoRoot(t)
	capmvm := capmvmBinary(t, root)
	state := filepath.Join(t.TempDir(), "mgmt")
	m := framework.NewMgmt(t, root, state, capmvm)
	mgmt := m.Run
	var pids []int
	t.Cleanup(func() {
		if _, err := os.Stat(state); err == nil {
			pids = m.Pids(t)
		}
		if out, err := mgmt("down"); err != nil {
			t.Errorf("mgmt.sh down: %v\n%s", err, out)
		}
		for _, pid := range pids {
			if framework.Alive(pid) {
				t.Errorf("process %d still runs after down", pid)
			}
		}
		if _, err := os.Stat(state); !os.IsNotExist(err) {
			t.Errorf("down left %s: %v", state, err)
		}
	})

	start := time.Now()
	if out, err := mgmt("up"); err != nil {
		t.Fatalf("mgmt.sh up: %v\n%s", err, out)
	}
	t.Logf("management cluster up in %s", time.Since(start).Round(100*time.Millisecond))
	pids = m.Pids(t)
	if len(pids) != len(framework.MgmtComponents) {
		t.Fatalf("%d processes recorded, want %d", len(pids), len(framework.MgmtComponents))
	}

	// Idempotent, and quiet when already up.
	start = time.Now()
	out, err := mgmt("up")
	if err != nil || out != "" {
		t.Errorf("second up: %v, output %q; want silence", err, out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("second up took %s", d)
	}
	if out, err := mgmt("status"); err != nil || strings.Count(out, ": running") != len(framework.MgmtComponents) {
		t.Errorf("status: %v\n%s", err, out)
	}

	// Every manager's health endpoint.
	ports := readPorts(t, filepath.Join(state, "ports.env"))
	for _, p := range []string{"CORE_HEALTH_PORT", "BOOTSTRAP_HEALTH_PORT", "CONTROLPLANE_HEALTH_PORT", "CAPMVM_HEALTH_PORT"} {
		for _, path := range []string{"/healthz", "/readyz"} {
			url := fmt.Sprintf("http://127.0.0.1:%d%s", ports[p], path)
			resp, err := http.Get(url)
			if err != nil {
				t.Errorf("%s: %v", url, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: %s", url, resp.Status)
			}
		}
	}

	kubeconfig := m.Kubeconfig()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}

	// The Cluster API and CAPMVM resources are served.
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := map[string][]string{
		"cluster.x-k8s.io/v1beta2":                 {"clusters", "machines", "machinedeployments", "machinesets", "clusterclasses"},
		"bootstrap.cluster.x-k8s.io/v1beta2":       {"kubeadmconfigs", "kubeadmconfigtemplates"},
		"controlplane.cluster.x-k8s.io/v1beta2":    {"kubeadmcontrolplanes", "kubeadmcontrolplanetemplates"},
		"addons.cluster.x-k8s.io/v1beta2":          {"clusterresourcesets"},
		"infrastructure.cluster.x-k8s.io/v1alpha1": {"microvmclusters", "microvmmachines", "microvmmachinetemplates", "microvmclustertemplates"},
	}
	for gv, resources := range served {
		list, err := dc.ServerResourcesForGroupVersion(gv)
		if err != nil {
			t.Errorf("%s is not served: %v", gv, err)
			continue
		}
		have := map[string]bool{}
		for _, r := range list.APIResources {
			have[r.Name] = true
		}
		for _, r := range resources {
			if !have[r] {
				t.Errorf("%s/%s is not served", gv, r)
			}
		}
	}

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, clusterv1.AddToScheme, infrav1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// A MicrovmCluster through the API server: capmvm's validating webhook,
	// called on loopback, rejects a host endpoint without a port and lets
	// the seed's cluster in.
	bad := &infrav1.MicrovmCluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "bad"},
		Spec: infrav1.MicrovmClusterSpec{Placement: infrav1.Placement{StaticPool: &infrav1.HostPool{
			Hosts: []infrav1.Host{{Endpoint: "147.75.80.43"}},
		}}},
	}
	if err := c.Create(ctx, bad); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "endpoint") {
		t.Errorf("create a MicrovmCluster whose host has no port: %v; want capmvm's webhook to reject it", err)
	}
	good := &infrav1.MicrovmCluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "seed"},
		Spec: infrav1.MicrovmClusterSpec{Placement: infrav1.Placement{StaticPool: &infrav1.HostPool{
			Hosts: []infrav1.Host{{Endpoint: seedHosts[0]}, {Endpoint: seedHosts[1]}},
		}}},
	}
	good.Spec.ControlPlaneEndpoint.Host = seed["CONTROL_PLANE_VIP"]
	good.Spec.ControlPlaneEndpoint.Port = 6443
	if err := c.Create(ctx, good); err != nil {
		t.Fatalf("create the seed's MicrovmCluster: %v", err)
	}
	var back infrav1.MicrovmCluster
	if err := c.Get(ctx, client.ObjectKeyFromObject(good), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Spec.Placement.StaticPool.Hosts) != 2 || back.Spec.ControlPlaneEndpoint.Host != seed["CONTROL_PLANE_VIP"] {
		t.Errorf("stored MicrovmCluster %+v", back.Spec)
	}

	// The seed's command, run against the management cluster (which gives
	// the namespace), and its cluster applied for real: Cluster API's
	// webhooks (on loopback) default the MachineDeployment's selector.
	repo := release(t)
	out, stderr, err := clusterctl(t, merge(seed, map[string]string{"KUBECONFIG": kubeconfig}),
		"generate", "cluster", "--config", filepath.Join(repo, "clusterctl.yaml"),
		"--infrastructure", "microvm:"+version, "--flavor", "cilium", seed["CLUSTER_NAME"])
	if err != nil {
		t.Fatalf("clusterctl generate cluster against the management cluster: %v\n%s", err, stderr)
	}
	if stdout, stderr, err := kubectl(t, kubeconfig, out, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply the seed's cluster: %v\n%s\n%s", err, stdout, stderr)
	}
	var md clusterv1.MachineDeployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: seed["CLUSTER_NAME"] + "-md-0"}, &md); err != nil {
		t.Fatal(err)
	}
	if l := md.Spec.Selector.MatchLabels[clusterv1.ClusterNameLabel]; l != seed["CLUSTER_NAME"] {
		t.Errorf("MachineDeployment selector %v: Cluster API's defaulting webhook did not run", md.Spec.Selector.MatchLabels)
	}

	checkTopologyReconciles(ctx, t, c, kubeconfig, repo)

	// kube-controller-manager runs: the namespace controller finalizes a
	// deleted namespace.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mgmt-test"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, ns); err != nil {
		t.Fatal(err)
	}
	for {
		err := c.Get(ctx, client.ObjectKeyFromObject(ns), &corev1.Namespace{})
		if apierrors.IsNotFound(err) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("namespace %s was not finalized: %v", ns.Name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// capmvmBinary returns CAPMVM_BIN or builds cmd/capmvm.
func capmvmBinary(t *testing.T, root string) string {
	t.Helper()
	if b := os.Getenv("CAPMVM_BIN"); b != "" {
		return b
	}
	return framework.BuildCAPMVM(t, root, t.TempDir())
}

func readPorts(t *testing.T, file string) map[string]int {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ports := map[string]int{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), "=")
		if !ok {
			continue
		}
		p, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s: %q", file, s.Text())
		}
		ports[k] = p
	}
	return ports
}

// checkTopologyReconciles applies the topology flavor (a Cluster of the
// ClusterClass microvm, which clusterctl appends) and waits for Cluster
// API's topology controller to accept the class and render the cluster's
// objects through its patches: the MicrovmCluster gets the VIP and hosts
// from the Cluster's variables, the control plane the kube-vip pod.
func checkTopologyReconciles(ctx context.Context, t *testing.T, c client.Client, kubeconfig, repo string) {
	t.Helper()
	const name = "mvm-topo"
	out, stderr, err := clusterctl(t, merge(seed, map[string]string{
		"KUBECONFIG": kubeconfig, "CLUSTER_NAME": name, "HOST_ENDPOINT": seedHosts[1],
	}), "generate", "cluster", "--config", filepath.Join(repo, "clusterctl.yaml"),
		"--infrastructure", "microvm:"+version, "--flavor", "topology", name)
	if err != nil {
		t.Fatalf("clusterctl generate cluster --flavor topology: %v\n%s", err, stderr)
	}
	if stdout, stderr, err := kubectl(t, kubeconfig, out, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply the topology cluster: %v\n%s\n%s", err, stdout, stderr)
	}
	key := client.ObjectKey{Namespace: "default", Name: name}
	var cluster clusterv1.Cluster
	for {
		if err := c.Get(ctx, key, &cluster); err != nil {
			t.Fatal(err)
		}
		reconciled := false
		for _, cond := range cluster.Status.Conditions {
			if cond.Type == clusterv1.ClusterTopologyReconciledCondition && cond.Status == metav1.ConditionTrue {
				reconciled = true
			}
		}
		if reconciled && cluster.Spec.InfrastructureRef.Name != "" && cluster.Spec.ControlPlaneRef.Name != "" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the topology of %s was not reconciled: %+v", name, cluster.Status.Conditions)
		}
		time.Sleep(500 * time.Millisecond)
	}
	var mc infrav1.MicrovmCluster
	if err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: cluster.Spec.InfrastructureRef.Name}, &mc); err != nil {
		t.Fatal(err)
	}
	if mc.Spec.ControlPlaneEndpoint.Host != seed["CONTROL_PLANE_VIP"] || mc.Spec.ControlPlaneEndpoint.Port != 6443 {
		t.Errorf("topology MicrovmCluster endpoint %+v", mc.Spec.ControlPlaneEndpoint)
	}
	if h := mc.Spec.Placement.StaticPool.Hosts; len(h) != 1 || h[0].Endpoint != seedHosts[1] {
		t.Errorf("topology MicrovmCluster hosts %+v, want %s", h, seedHosts[1])
	}
	kcp := &unstructured.Unstructured{}
	kcp.SetGroupVersionKind(controlplanev1.GroupVersion.WithKind("KubeadmControlPlane"))
	if err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: cluster.Spec.ControlPlaneRef.Name}, kcp); err != nil {
		t.Fatal(err)
	}
	files, _, _ := unstructured.NestedSlice(kcp.Object, "spec", "kubeadmConfigSpec", "files")
	vip := false
	for _, f := range files {
		fm, _ := f.(map[string]any)
		content, _ := fm["content"].(string)
		vip = vip || (fm["path"] == "/etc/kubernetes/manifests/kube-vip.yaml" &&
			strings.Contains(content, `value: "`+seed["CONTROL_PLANE_VIP"]+`"`))
	}
	if !vip {
		t.Errorf("the topology control plane has no kube-vip pod for the VIP: %v", files)
	}
}
