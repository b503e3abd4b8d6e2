package clusterctl_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	addonsv1 "sigs.k8s.io/cluster-api/api/addons/v1beta2"
	bootstrapv1 "sigs.k8s.io/cluster-api/api/bootstrap/kubeadm/v1beta2"
	controlplanev1 "sigs.k8s.io/cluster-api/api/controlplane/kubeadm/v1beta2"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// TestTemplatesUpToDate regenerates the templates with hack/cni (cilium's
// chart rendered with Helm, flannel's manifest, templates/src) into a
// temporary folder and compares them with the committed templates/.
func TestTemplatesUpToDate(t *testing.T) {
	root := repoRoot(t)
	out := t.TempDir()
	cmd := exec.Command("go", "run", ".", "-root", root, "-out", out)
	cmd.Dir = filepath.Join(root, "hack", "cni")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/cni: %v\n%s", err, b)
	}
	generated, err := filepath.Glob(filepath.Join(out, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	committed, err := filepath.Glob(filepath.Join(root, "templates", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(generated) == 0 {
		t.Fatal("hack/cni wrote no templates")
	}
	names := func(paths []string) []string {
		var n []string
		for _, p := range paths {
			n = append(n, filepath.Base(p))
		}
		return n
	}
	if g, c := names(generated), names(committed); !slices.Equal(g, c) {
		t.Errorf("hack/cni writes %v, templates/ holds %v: run make generate-templates", g, c)
	}
	for _, g := range generated {
		want, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		have, err := os.ReadFile(filepath.Join(root, "templates", filepath.Base(g)))
		if err != nil {
			t.Errorf("%v (run make generate-templates)", err)
			continue
		}
		if !bytes.Equal(have, want) {
			t.Errorf("templates/%s is stale: run make generate-templates", filepath.Base(g))
		}
	}
}

// TestReleaseRepository checks the clusterctl local repository of
// hack/release-artifacts.sh: its layout, metadata.yaml, and the contract
// clusterctl sets for infrastructure-components.yaml.
func TestReleaseRepository(t *testing.T) {
	repo := release(t)
	dir := filepath.Join(repo, "infrastructure-microvm", version)
	want := []string{
		"cluster-template-cilium.yaml", "cluster-template-flannel.yaml", "cluster-template-topology.yaml",
		"cluster-template.yaml", "clusterclass-microvm.yaml", "infrastructure-components.yaml", "metadata.yaml",
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var have []string
	for _, e := range entries {
		have = append(have, e.Name())
	}
	if !slices.Equal(have, want) {
		t.Errorf("%s holds %v, want %v", dir, have, want)
	}

	var md struct {
		APIVersion    string `json:"apiVersion"`
		Kind          string `json:"kind"`
		ReleaseSeries []struct {
			Major, Minor int
			Contract     string
		} `json:"releaseSeries"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "metadata.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &md); err != nil {
		t.Fatalf("metadata.yaml: %v", err)
	}
	if md.APIVersion != "clusterctl.cluster.x-k8s.io/v1alpha3" || md.Kind != "Metadata" {
		t.Errorf("metadata.yaml is %s %s", md.APIVersion, md.Kind)
	}
	found := false
	for _, s := range md.ReleaseSeries {
		if s.Major == 0 && s.Minor == 1 {
			found = true
			if s.Contract != "v1beta2" {
				t.Errorf("release series 0.1 implements contract %q, want v1beta2", s.Contract)
			}
		}
	}
	if !found {
		t.Errorf("metadata.yaml has no release series 0.1: %+v", md.ReleaseSeries)
	}

	docs := readDocs(t, filepath.Join(dir, "infrastructure-components.yaml"))
	namespaces, crds := 0, 0
	kinds := map[string]int{}
	for _, d := range docs {
		kinds[d.Kind]++
		if l := d.Labels["cluster.x-k8s.io/provider"]; l != "infrastructure-microvm" {
			t.Errorf("%s %s has provider label %q", d.Kind, d.Name, l)
		}
		if !strings.HasPrefix(d.Name, "capmvm-") && d.Kind != "CustomResourceDefinition" {
			t.Errorf("%s %s lacks the capmvm- prefix", d.Kind, d.Name)
		}
		switch d.Kind {
		case "Namespace":
			namespaces++
			if d.Name != "capmvm-system" {
				t.Errorf("namespace %s, want capmvm-system", d.Name)
			}
		case "CustomResourceDefinition":
			crds++
			if l := d.Labels["cluster.x-k8s.io/v1beta2"]; l != "v1alpha1" {
				t.Errorf("CRD %s has contract label %q, want v1alpha1", d.Name, l)
			}
		case "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
		default:
			if d.Namespace != "capmvm-system" {
				t.Errorf("%s %s is in namespace %q", d.Kind, d.Name, d.Namespace)
			}
		}
	}
	if namespaces != 1 || crds != 4 {
		t.Errorf("%d namespaces and %d CRDs, want 1 and 4", namespaces, crds)
	}
	for _, k := range []string{"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Certificate", "Issuer", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} {
		if kinds[k] == 0 {
			t.Errorf("infrastructure-components.yaml has no %s", k)
		}
	}

	for _, d := range docs {
		switch d.Kind {
		case "Deployment":
			var dep appsv1.Deployment
			d.decode(t, &dep)
			checkManager(t, &dep)
		case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
			if a := d.Annotations["cert-manager.io/inject-ca-from"]; a != "capmvm-system/capmvm-serving-cert" {
				t.Errorf("%s %s: inject-ca-from %q", d.Kind, d.Name, a)
			}
			var services []*admissionregistrationv1.ServiceReference
			if d.Kind == "MutatingWebhookConfiguration" {
				var wc admissionregistrationv1.MutatingWebhookConfiguration
				d.decode(t, &wc)
				for _, w := range wc.Webhooks {
					services = append(services, w.ClientConfig.Service)
				}
			} else {
				var wc admissionregistrationv1.ValidatingWebhookConfiguration
				d.decode(t, &wc)
				for _, w := range wc.Webhooks {
					services = append(services, w.ClientConfig.Service)
				}
			}
			if len(services) == 0 {
				t.Errorf("%s %s has no webhooks", d.Kind, d.Name)
			}
			for _, s := range services {
				if s == nil || s.Name != "capmvm-webhook-service" || s.Namespace != "capmvm-system" {
					t.Errorf("%s %s calls service %+v, want capmvm-system/capmvm-webhook-service", d.Kind, d.Name, s)
				}
			}
		case "Certificate":
			var c struct {
				Spec struct {
					DNSNames   []string `json:"dnsNames"`
					SecretName string   `json:"secretName"`
				}
			}
			// cert-manager's types are not a dependency: only these fields.
			if err := yaml.Unmarshal(d.raw, &c); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(c.Spec.DNSNames, "capmvm-webhook-service.capmvm-system.svc") {
				t.Errorf("certificate names %v", c.Spec.DNSNames)
			}
			if c.Spec.SecretName != "capmvm-webhook-service-cert" {
				t.Errorf("certificate secret %q", c.Spec.SecretName)
			}
		}
	}

	// clusterctl's own reading of the provider: components processed,
	// namespace and image found.
	out, stderr, err := clusterctl(t, nil, "generate", "provider", "--describe",
		"--config", filepath.Join(repo, "clusterctl.yaml"), "--infrastructure", "microvm:"+version)
	if err != nil {
		t.Fatalf("clusterctl generate provider --describe: %v: %s", err, stderr)
	}
	for _, w := range []string{"TargetNamespace:    capmvm-system", "ghcr.io/liquidmetal-go/capmvm:" + version} {
		if !strings.Contains(out, w) {
			t.Errorf("clusterctl describes the provider without %q:\n%s", w, out)
		}
	}
}

// checkManager checks the manager Deployment of the components.
func checkManager(t *testing.T, dep *appsv1.Deployment) {
	t.Helper()
	var m *corev1.Container
	for i, c := range dep.Spec.Template.Spec.Containers {
		if c.Name == "manager" {
			m = &dep.Spec.Template.Spec.Containers[i]
		}
	}
	if m == nil {
		t.Fatalf("deployment %s has no container named manager", dep.Name)
	}
	for _, a := range []string{"--leader-elect", "--health-addr=:9440", "--metrics-bind-addr=:8080"} {
		if !slices.Contains(m.Args, a) {
			t.Errorf("manager args %v lack %s", m.Args, a)
		}
	}
	if p := m.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
		t.Errorf("manager liveness probe %+v, want GET /healthz", p)
	}
	if p := m.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
		t.Errorf("manager readiness probe %+v, want GET /readyz", p)
	}
	ports := map[string]int32{}
	for _, p := range m.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["webhook-server"] != 9443 || ports["healthz"] != 9440 {
		t.Errorf("manager ports %v", ports)
	}
	mounted := false
	for _, v := range m.VolumeMounts {
		mounted = mounted || v.MountPath == "/tmp/k8s-webhook-server/serving-certs"
	}
	if !mounted {
		t.Error("the webhook certificate is not mounted where controller-runtime reads it")
	}
	if m.Image != "ghcr.io/liquidmetal-go/capmvm:"+version {
		t.Errorf("manager image %q", m.Image)
	}
}

// TestGenerateCluster runs the seed's clusterctl generate cluster for every
// flavor and checks what the output holds.
func TestGenerateCluster(t *testing.T) {
	for _, flavor := range []string{"cilium", "flannel", "", "topology"} {
		name := flavor
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			out, err := generate(t, flavor, merge(seed, map[string]string{"HOST_ENDPOINT": seedHosts[0]}))
			if err != nil {
				t.Fatal(err)
			}
			c := parseCluster(t, out)
			if flavor == "topology" {
				checkTopology(t, c)
			} else {
				checkClassic(t, c)
			}
			checkCNI(t, c, flavor)
		})
	}

	t.Run("defaults", func(t *testing.T) {
		// Only the required variable: the defaults of everything else.
		out, err := generate(t, "", map[string]string{"CLUSTER_NAME": "c1", "CONTROL_PLANE_VIP": "10.0.0.9"})
		if err != nil {
			t.Fatal(err)
		}
		c := parseCluster(t, out)
		hosts := c.microvmCluster.Spec.Placement.StaticPool.Hosts
		if len(hosts) != 1 || hosts[0].Endpoint != "127.0.0.1:9090" {
			t.Errorf("default hosts %+v", hosts)
		}
		if v := c.kcp.Spec.Version; v != "v1.34.4" {
			t.Errorf("default Kubernetes version %q", v)
		}
		if img := c.machineTemplates["c1-md-0"].Spec.Template.Spec.RootVolume.Image; !strings.HasSuffix(img, ":v1.34.4") {
			t.Errorf("default root image %q does not follow the Kubernetes version", img)
		}
		if p := c.cluster.Spec.ClusterNetwork.Pods.CIDRBlocks; !slices.Equal(p, []string{"10.244.0.0/16"}) {
			t.Errorf("default pod CIDRs %v", p)
		}
	})

	t.Run("overrides", func(t *testing.T) {
		out, err := generate(t, "flannel", merge(seed, map[string]string{
			"KUBERNETES_VERSION": "v1.33.2", "POD_CIDR": "172.20.0.0/16", "SERVICES_CIDR": "172.21.0.0/16",
			"MVM_ROOT_IMAGE": "example.test/root:1", "MVM_KERNEL_IMAGE": "example.test/kernel:1",
			"MVM_KERNEL_FILENAME": "boot/vmlinuz", "MVM_INTERFACE_TYPE": "tap",
		}))
		if err != nil {
			t.Fatal(err)
		}
		c := parseCluster(t, out)
		checkCNI(t, c, "flannel")
		if c.kcp.Spec.Version != "v1.33.2" || c.md.Spec.Template.Spec.Version != "v1.33.2" {
			t.Errorf("versions %q, %q", c.kcp.Spec.Version, c.md.Spec.Template.Spec.Version)
		}
		for name, mt := range c.machineTemplates {
			s := mt.Spec.Template.Spec
			if s.RootVolume.Image != "example.test/root:1" || s.Kernel.Image != "example.test/kernel:1" ||
				s.Kernel.Filename != "boot/vmlinuz" || s.NetworkInterfaces[0].Type != infrav1.IfaceTypeTap {
				t.Errorf("%s: %+v", name, s)
			}
		}
		if !strings.Contains(c.cniManifest, `"Network": "172.20.0.0/16"`) {
			t.Error("flannel's network does not follow POD_CIDR")
		}
	})

	t.Run("missing variable", func(t *testing.T) {
		env := merge(seed)
		delete(env, "CONTROL_PLANE_VIP")
		_, err := generate(t, "cilium", env)
		if err == nil || !strings.Contains(err.Error(), "CONTROL_PLANE_VIP") {
			t.Fatalf("generate without CONTROL_PLANE_VIP: %v, want an error naming it", err)
		}
	})
}

// generatedCluster is the typed content of a generated cluster.
type generatedCluster struct {
	docs             []doc
	cluster          clusterv1.Cluster
	microvmCluster   infrav1.MicrovmCluster
	kcp              controlplanev1.KubeadmControlPlane
	md               clusterv1.MachineDeployment
	machineTemplates map[string]infrav1.MicrovmMachineTemplate
	configTemplate   bootstrapv1.KubeadmConfigTemplate
	crs              *addonsv1.ClusterResourceSet
	configMaps       map[string]corev1.ConfigMap
	cniManifest      string

	class          *clusterv1.ClusterClass
	clusterTmpl    *infrav1.MicrovmClusterTemplate
	kcpTmpl        *controlplanev1.KubeadmControlPlaneTemplate
	otherTemplates int
}

// parseCluster decodes every document of clusterctl's output strictly into
// its Go type: a misspelt or unknown field fails the test.
func parseCluster(t *testing.T, out string) *generatedCluster {
	t.Helper()
	c := &generatedCluster{
		docs:             parseDocs(t, "clusterctl output", []byte(out)),
		machineTemplates: map[string]infrav1.MicrovmMachineTemplate{},
		configMaps:       map[string]corev1.ConfigMap{},
	}
	for _, d := range c.docs {
		if d.Namespace != "default" && d.Kind != "ClusterClass" {
			// ClusterClass objects too are namespaced; clusterctl puts
			// them in the target namespace as well.
			t.Errorf("%s %s in namespace %q", d.Kind, d.Name, d.Namespace)
		}
		switch d.APIVersion + "/" + d.Kind {
		case "cluster.x-k8s.io/v1beta2/Cluster":
			d.decode(t, &c.cluster)
		case "infrastructure.cluster.x-k8s.io/v1alpha1/MicrovmCluster":
			d.decode(t, &c.microvmCluster)
		case "controlplane.cluster.x-k8s.io/v1beta2/KubeadmControlPlane":
			d.decode(t, &c.kcp)
		case "cluster.x-k8s.io/v1beta2/MachineDeployment":
			d.decode(t, &c.md)
		case "infrastructure.cluster.x-k8s.io/v1alpha1/MicrovmMachineTemplate":
			var mt infrav1.MicrovmMachineTemplate
			d.decode(t, &mt)
			c.machineTemplates[mt.Name] = mt
		case "bootstrap.cluster.x-k8s.io/v1beta2/KubeadmConfigTemplate":
			d.decode(t, &c.configTemplate)
		case "addons.cluster.x-k8s.io/v1beta2/ClusterResourceSet":
			c.crs = &addonsv1.ClusterResourceSet{}
			d.decode(t, c.crs)
		case "v1/ConfigMap":
			var cm corev1.ConfigMap
			d.decode(t, &cm)
			c.configMaps[cm.Name] = cm
		case "cluster.x-k8s.io/v1beta2/ClusterClass":
			c.class = &clusterv1.ClusterClass{}
			d.decode(t, c.class)
		case "infrastructure.cluster.x-k8s.io/v1alpha1/MicrovmClusterTemplate":
			c.clusterTmpl = &infrav1.MicrovmClusterTemplate{}
			d.decode(t, c.clusterTmpl)
		case "controlplane.cluster.x-k8s.io/v1beta2/KubeadmControlPlaneTemplate":
			c.kcpTmpl = &controlplanev1.KubeadmControlPlaneTemplate{}
			d.decode(t, c.kcpTmpl)
		default:
			t.Errorf("unexpected %s %s %s", d.APIVersion, d.Kind, d.Name)
		}
	}
	return c
}

// checkClassic checks a cluster of the default, cilium or flannel flavor
// against the seed's variables.
func checkClassic(t *testing.T, c *generatedCluster) {
	t.Helper()
	name := seed["CLUSTER_NAME"]
	if c.cluster.Name != name {
		t.Fatalf("cluster %q, want %q", c.cluster.Name, name)
	}
	spec := c.cluster.Spec
	if r := spec.InfrastructureRef; r.Kind != "MicrovmCluster" || r.Name != c.microvmCluster.Name || r.APIGroup != infrav1.GroupVersion.Group {
		t.Errorf("infrastructureRef %+v, MicrovmCluster %s", r, c.microvmCluster.Name)
	}
	if r := spec.ControlPlaneRef; r.Kind != "KubeadmControlPlane" || r.Name != c.kcp.Name {
		t.Errorf("controlPlaneRef %+v, KubeadmControlPlane %s", r, c.kcp.Name)
	}
	mc := c.microvmCluster.Spec
	if ep := mc.ControlPlaneEndpoint; ep.Host != seed["CONTROL_PLANE_VIP"] || ep.Port != 6443 {
		t.Errorf("control-plane endpoint %+v, want the VIP %s:6443", ep, seed["CONTROL_PLANE_VIP"])
	}
	if mc.Placement.StaticPool == nil || len(mc.Placement.StaticPool.Hosts) != 1 ||
		mc.Placement.StaticPool.Hosts[0].Endpoint != seedHosts[0] || !mc.Placement.StaticPool.Hosts[0].AllowsControlPlane() {
		t.Errorf("static pool %+v, want the seed's host %s, control plane allowed", mc.Placement.StaticPool, seedHosts[0])
	}
	if c.kcp.Spec.Replicas == nil || *c.kcp.Spec.Replicas != 1 {
		t.Errorf("control-plane replicas %v, want 1", c.kcp.Spec.Replicas)
	}
	if c.md.Spec.Replicas == nil || *c.md.Spec.Replicas != 5 {
		t.Errorf("worker replicas %v, want 5", c.md.Spec.Replicas)
	}
	if c.md.Spec.ClusterName != name || c.md.Spec.Template.Spec.ClusterName != name {
		t.Errorf("machine deployment of cluster %q/%q", c.md.Spec.ClusterName, c.md.Spec.Template.Spec.ClusterName)
	}
	cpTmpl := c.kcp.Spec.MachineTemplate.Spec.InfrastructureRef.Name
	mdTmpl := c.md.Spec.Template.Spec.InfrastructureRef.Name
	for _, n := range []string{cpTmpl, mdTmpl} {
		mt, ok := c.machineTemplates[n]
		if !ok {
			t.Errorf("no MicrovmMachineTemplate %q", n)
			continue
		}
		s := mt.Spec.Template.Spec
		if s.VCPU < 1 || s.MemoryMb < 1024 || s.RootVolume.Image == "" || s.Kernel.Image == "" || len(s.NetworkInterfaces) != 1 {
			t.Errorf("machine template %s: %+v", n, s)
		}
	}
	if b := c.md.Spec.Template.Spec.Bootstrap.ConfigRef; b.Name != c.configTemplate.Name || b.Kind != "KubeadmConfigTemplate" {
		t.Errorf("bootstrap ref %+v, template %s", b, c.configTemplate.Name)
	}
	checkKubeadm(t, &c.kcp.Spec.KubeadmConfigSpec, c.configTemplate.Spec.Template.Spec.JoinConfiguration.NodeRegistration, seed["CONTROL_PLANE_VIP"])
}

// checkKubeadm checks the control plane's kube-vip static pod and that
// every node registers with the microvm provider ID.
func checkKubeadm(t *testing.T, cp *bootstrapv1.KubeadmConfigSpec, worker bootstrapv1.NodeRegistrationOptions, vip string) {
	t.Helper()
	for name, nr := range map[string]bootstrapv1.NodeRegistrationOptions{
		"init": cp.InitConfiguration.NodeRegistration, "join": cp.JoinConfiguration.NodeRegistration, "worker": worker,
	} {
		found := false
		for _, a := range nr.KubeletExtraArgs {
			if a.Name == "provider-id" && a.Value != nil && *a.Value == "microvm://{{ ds.meta_data.vm_host }}/{{ ds.meta_data.instance_id }}" {
				found = true
			}
		}
		if !found {
			t.Errorf("%s node registration has no microvm provider-id: %+v", name, nr.KubeletExtraArgs)
		}
	}
	var vipPod *corev1.Pod
	for _, f := range cp.Files {
		if f.Path == "/etc/kubernetes/manifests/kube-vip.yaml" {
			vipPod = &corev1.Pod{}
			if err := decodeStrict([]byte(f.Content), vipPod); err != nil {
				t.Fatalf("kube-vip static pod: %v", err)
			}
		}
	}
	if vipPod == nil {
		t.Fatal("no kube-vip static pod among the control plane's files")
	}
	env := map[string]string{}
	for _, e := range vipPod.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	if env["address"] != vip || env["cp_enable"] != "true" || env["port"] != "6443" {
		t.Errorf("kube-vip env %v, want address %s", env, vip)
	}
	if !strings.HasPrefix(vipPod.Spec.Containers[0].Image, "ghcr.io/kube-vip/kube-vip:v") || !vipPod.Spec.HostNetwork {
		t.Errorf("kube-vip pod %+v", vipPod.Spec)
	}
}

// checkTopology checks the topology flavor: a Cluster of the ClusterClass
// microvm with the seed's variables, and the class appended by clusterctl.
func checkTopology(t *testing.T, c *generatedCluster) {
	t.Helper()
	topo := c.cluster.Spec.Topology
	if topo.ClassRef.Name != "microvm" || c.class == nil || c.class.Name != "microvm" {
		t.Fatalf("topology class %q, ClusterClass %v", topo.ClassRef.Name, c.class)
	}
	if topo.ControlPlane.Replicas == nil || *topo.ControlPlane.Replicas != 1 ||
		len(topo.Workers.MachineDeployments) != 1 || *topo.Workers.MachineDeployments[0].Replicas != 5 {
		t.Errorf("topology replicas %+v", topo)
	}
	vars := map[string]string{}
	for _, v := range topo.Variables {
		vars[v.Name] = string(v.Value.Raw)
	}
	if vars["controlPlaneVIP"] != `"`+seed["CONTROL_PLANE_VIP"]+`"` {
		t.Errorf("controlPlaneVIP %s", vars["controlPlaneVIP"])
	}
	if !strings.Contains(vars["hosts"], seedHosts[0]) {
		t.Errorf("hosts %s, want the seed's host", vars["hosts"])
	}
	declared := map[string]bool{}
	for _, v := range c.class.Spec.Variables {
		declared[v.Name] = true
	}
	for n := range vars {
		if !declared[n] {
			t.Errorf("the Cluster sets variable %s, which the ClusterClass does not declare", n)
		}
	}
	if c.clusterTmpl == nil || c.kcpTmpl == nil || len(c.machineTemplates) != 2 {
		t.Errorf("the ClusterClass's templates are missing: %v %v %d", c.clusterTmpl, c.kcpTmpl, len(c.machineTemplates))
	}
	if r := c.class.Spec.Infrastructure.TemplateRef; r.Kind != "MicrovmClusterTemplate" || c.clusterTmpl == nil || r.Name != c.clusterTmpl.Name {
		t.Errorf("infrastructure template %+v", r)
	}
}

// checkCNI checks the ClusterResourceSet and ConfigMap of the cilium and
// flannel flavors (and their absence from the default one).
func checkCNI(t *testing.T, c *generatedCluster, flavor string) {
	t.Helper()
	cni := flavor
	if flavor == "topology" {
		cni = "cilium"
	}
	if cni == "" {
		if c.crs != nil || len(c.configMaps) != 0 || c.cluster.Labels["cni"] != "" {
			t.Errorf("the default flavor installs a CNI: %v %v", c.crs, c.configMaps)
		}
		return
	}
	if c.crs == nil {
		t.Fatal("no ClusterResourceSet")
	}
	for k, v := range c.crs.Spec.ClusterSelector.MatchLabels {
		if c.cluster.Labels[k] != v {
			t.Errorf("the ClusterResourceSet selects %s=%s, the Cluster's labels are %v", k, v, c.cluster.Labels)
		}
	}
	if len(c.crs.Spec.ClusterSelector.MatchLabels) == 0 {
		t.Error("the ClusterResourceSet selects every cluster")
	}
	if len(c.crs.Spec.Resources) != 1 || c.crs.Spec.Resources[0].Kind != "ConfigMap" {
		t.Fatalf("ClusterResourceSet resources %+v", c.crs.Spec.Resources)
	}
	cm, ok := c.configMaps[c.crs.Spec.Resources[0].Name]
	if !ok {
		t.Fatalf("no ConfigMap %s", c.crs.Spec.Resources[0].Name)
	}
	manifest, ok := cm.Data[cni+".yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no %s.yaml: %v", cm.Name, cni, keys(cm.Data))
	}
	c.cniManifest = manifest
	// The CNI's own objects, as the ClusterResourceSet will apply them.
	objs := parseDocs(t, cm.Name, []byte(manifest))
	daemonSets := map[string]bool{}
	for _, o := range objs {
		if o.Kind == "DaemonSet" {
			var ds appsv1.DaemonSet
			o.decode(t, &ds)
			daemonSets[ds.Name] = true
			if len(ds.Spec.Template.Spec.Containers) == 0 {
				t.Errorf("DaemonSet %s has no containers", ds.Name)
			}
		}
	}
	switch cni {
	case "cilium":
		if !daemonSets["cilium"] {
			t.Errorf("cilium manifest has DaemonSets %v", daemonSets)
		}
		// The chart's shell "${BIN_PATH}" reaches the cluster as is: the
		// generator escaped it from clusterctl's substitution.
		if !strings.Contains(manifest, `"${BIN_PATH}/cilium-mount"`) {
			t.Error("cilium's ${BIN_PATH} was substituted by clusterctl")
		}
		if !strings.Contains(manifest, "ipam: \"kubernetes\"") && !strings.Contains(manifest, "ipam: kubernetes") {
			t.Error("cilium is not configured for Kubernetes IPAM (the Cluster's pod CIDR)")
		}
	case "flannel":
		if !daemonSets["kube-flannel-ds"] {
			t.Errorf("flannel manifest has DaemonSets %v", daemonSets)
		}
		if want := fmt.Sprintf(`"Network": "%s"`, c.cluster.Spec.ClusterNetwork.Pods.CIDRBlocks[0]); !strings.Contains(manifest, want) {
			t.Errorf("flannel's net-conf.json lacks %s", want)
		}
	}
}

func keys(m map[string]string) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

// doc is one YAML document with its identity.
type doc struct {
	APIVersion, Kind, Name, Namespace string
	Labels, Annotations               map[string]string
	raw                               []byte // JSON
}

func (d doc) decode(t *testing.T, into any) {
	t.Helper()
	if err := strictJSON(d.raw, into); err != nil {
		t.Errorf("%s %s: %v", d.Kind, d.Name, err)
	}
}

func readDocs(t *testing.T, file string) []doc {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return parseDocs(t, filepath.Base(file), b)
}

// parseDocs splits multi-document YAML and reads each document's identity.
func parseDocs(t *testing.T, what string, b []byte) []doc {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var docs []doc
	for {
		y, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		j, err := yaml.YAMLToJSON(y)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if string(j) == "null" {
			continue
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name, Namespace     string
				Labels, Annotations map[string]string
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(j, &meta); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if meta.Kind == "" || meta.Metadata.Name == "" {
			t.Fatalf("%s: a document without kind or name:\n%s", what, y)
		}
		docs = append(docs, doc{meta.APIVersion, meta.Kind, meta.Metadata.Name, meta.Metadata.Namespace,
			meta.Metadata.Labels, meta.Metadata.Annotations, j})
	}
}

func decodeStrict(y []byte, into any) error {
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return err
	}
	return strictJSON(j, into)
}

// strictJSON decodes like the API server: case-sensitive field names,
// unknown and duplicate fields are errors.
func strictJSON(j []byte, into any) error {
	strict, err := kjson.UnmarshalStrict(j, into, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}
