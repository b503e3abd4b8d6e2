package testenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The cached binaries must report the pinned version: kubectl and
// controller-runtime refuse an unstamped v0.0.0-master server.
func TestKubeAndCAPIAssets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	kube, err := KubeAssets(ctx)
	if err != nil {
		t.Fatalf("Kubernetes binaries could not be built: %v", err)
	}
	for bin, want := range map[string]string{
		"kube-apiserver":          "Kubernetes " + KubeVersion,
		"kube-controller-manager": "Kubernetes " + KubeVersion,
		"etcd":                    "etcd Version: " + strings.TrimPrefix(EtcdVersion, "v"),
	} {
		out, err := exec.CommandContext(ctx, filepath.Join(kube, bin), "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v: %s", bin, err, out)
		}
		if !strings.Contains(string(out), want) {
			t.Errorf("%s --version = %q, want it to contain %q", bin, out, want)
		}
	}
	out, err := exec.CommandContext(ctx, filepath.Join(kube, "kubectl"), "version", "--client").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Client Version: "+KubeVersion) {
		t.Errorf("kubectl version --client = %q, %v; want %s", out, err, KubeVersion)
	}

	capi, err := CAPIAssets(ctx)
	if err != nil {
		t.Fatalf("Cluster API could not be built: %v", err)
	}
	out, err = exec.CommandContext(ctx, filepath.Join(capi, "clusterctl"), "version", "-o", "short").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != CAPIVersion {
		t.Errorf("clusterctl version -o short = %q, %v; want %s", out, err, CAPIVersion)
	}
	for _, p := range CAPIProviders {
		crds, _ := filepath.Glob(filepath.Join(capi, "crds", p, "*.yaml"))
		if len(crds) == 0 {
			t.Errorf("no CRDs for %s in the CAPI cache", p)
		}
		for _, f := range []string{"components", "webhooks"} {
			b, err := os.ReadFile(filepath.Join(capi, f, p+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), "kind: ValidatingWebhookConfiguration") {
				t.Errorf("%s/%s.yaml has no ValidatingWebhookConfiguration", f, p)
			}
		}
	}
}

// widgetCRD is a minimal CRD, to show that NewEnvtest installs the CRD
// folders it is given besides the Cluster API ones.
const widgetCRD = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.testenv.liquidmetal.invalid
spec:
  group: testenv.liquidmetal.invalid
  names: {kind: Widget, listKind: WidgetList, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
`

func TestEnvtestWithClusterAPI(t *testing.T) {
	crdDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(crdDir, "widgets.yaml"), []byte(widgetCRD), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cfg, _ := NewEnvtest(t, crdDir)
	t.Logf("envtest with %d CRD folders started in %s", len(CAPIProviders)+1, time.Since(start).Round(time.Millisecond))

	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := dc.ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != KubeVersion {
		t.Errorf("apiserver reports %q, want %q", v.GitVersion, KubeVersion)
	}

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, clusterv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "capi-test"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	cluster := &clusterv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "mvm-test", Labels: map[string]string{"env": "envtest"}},
		Spec: clusterv1.ClusterSpec{
			ControlPlaneEndpoint: clusterv1.APIEndpoint{Host: "192.168.10.2", Port: 6443},
			ClusterNetwork: clusterv1.ClusterNetwork{
				Pods: clusterv1.NetworkRanges{CIDRBlocks: []string{"10.244.0.0/16"}},
			},
		},
	}
	if err := c.Create(ctx, cluster); err != nil {
		t.Fatalf("create Cluster: %v", err)
	}
	var got clusterv1.Cluster
	if err := c.Get(ctx, client.ObjectKeyFromObject(cluster), &got); err != nil {
		t.Fatalf("get Cluster: %v", err)
	}
	if got.UID == "" || got.UID != cluster.UID {
		t.Errorf("read back UID %q, created %q", got.UID, cluster.UID)
	}
	if got.Spec.ControlPlaneEndpoint != cluster.Spec.ControlPlaneEndpoint ||
		len(got.Spec.ClusterNetwork.Pods.CIDRBlocks) != 1 || got.Spec.ClusterNetwork.Pods.CIDRBlocks[0] != "10.244.0.0/16" ||
		got.Labels["env"] != "envtest" {
		t.Errorf("read back spec %+v labels %v, want %+v", got.Spec, got.Labels, cluster.Spec)
	}

	// The CRD's OpenAPI schema is enforced by the server: the CRDs really are
	// Cluster API's, not a permissive stand-in.
	bad := &clusterv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "bad-port"},
		Spec:       clusterv1.ClusterSpec{ControlPlaneEndpoint: clusterv1.APIEndpoint{Host: "h", Port: 70000}},
	}
	if err := c.Create(ctx, bad); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.controlPlaneEndpoint.port") {
		t.Errorf("Cluster with port 70000: err = %v, want Invalid on spec.controlPlaneEndpoint.port", err)
	}

	// Machines and the kubeadm types are served too.
	var machines clusterv1.MachineList
	if err := c.List(ctx, &machines, client.InNamespace(ns.Name)); err != nil {
		t.Errorf("list Machines: %v", err)
	}
	for _, gv := range []string{"bootstrap.cluster.x-k8s.io/v1beta2", "controlplane.cluster.x-k8s.io/v1beta2", "testenv.liquidmetal.invalid/v1"} {
		if _, err := dc.ServerResourcesForGroupVersion(gv); err != nil {
			t.Errorf("%s not served: %v", gv, err)
		}
	}

	// The extra CRD folder was installed, with its schema.
	w := &unstructured.Unstructured{}
	w.SetGroupVersionKind(schema.GroupVersionKind{Group: "testenv.liquidmetal.invalid", Version: "v1", Kind: "Widget"})
	w.SetNamespace(ns.Name)
	w.SetName("w")
	w.Object["spec"] = map[string]any{"size": int64(0)}
	if err := c.Create(ctx, w); !apierrors.IsInvalid(err) {
		t.Errorf("Widget with size 0: err = %v, want Invalid", err)
	}
	w.Object["spec"] = map[string]any{"size": int64(3)}
	if err := c.Create(ctx, w); err != nil {
		t.Errorf("create Widget: %v", err)
	}

	if err := c.Delete(ctx, &got); err != nil {
		t.Errorf("delete Cluster: %v", err)
	}
}
