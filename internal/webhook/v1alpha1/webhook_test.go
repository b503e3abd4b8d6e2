package v1alpha1

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

const (
	clusterHook         = "validation.microvmcluster.infrastructure.cluster.x-k8s.io"
	clusterTemplateHook = "validation.microvmclustertemplate.infrastructure.cluster.x-k8s.io"
	machineHook         = "validation.microvmmachine.infrastructure.cluster.x-k8s.io"
	machineTemplateHook = "validation.microvmmachinetemplate.infrastructure.cluster.x-k8s.io"
)

// authorizedKey is a fresh ed25519 public key in authorized_keys format.
func authorizedKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " test@capmvm"
}

func clusterSpec(t *testing.T) infrav1.MicrovmClusterSpec {
	return infrav1.MicrovmClusterSpec{
		SSHPublicKeys: []infrav1.SSHPublicKey{{User: "capmvm", AuthorizedKeys: []string{authorizedKey(t)}}},
		Placement: infrav1.Placement{StaticPool: &infrav1.HostPool{
			Hosts: []infrav1.Host{
				{Name: "one", Endpoint: "10.0.0.1:9090"},
				{Name: "two", Endpoint: "flint-2.example.test:9090", ControlplaneAllowed: ptr.To(false)},
				{Endpoint: "[fd00::3]:9090"},
			},
			BasicAuthSecret: "flintlock-tokens",
		}},
		MicrovmProxy: &infrav1.Proxy{Endpoint: "http://127.0.0.1:3128"},
		TLSSecretRef: "flintlock-mtls",
	}
}

func machineSpec() infrav1.MicrovmMachineSpec {
	return infrav1.MicrovmMachineSpec{MicrovmSpec: infrav1.MicrovmSpec{
		VCPU:     2,
		MemoryMb: 2048,
		RootVolume: infrav1.Volume{
			ID: "root", Image: "capmvm/k8s-os:1.34.4", MountPoint: "/",
		},
		AdditionalVolumes: []infrav1.AdditionalVolume{{ID: "data", Image: "capmvm/data:1", MountPoint: "/data"}},
		Kernel:            infrav1.ContainerFileSource{Image: "capmvm/kernel-bin:6.1", Filename: "boot/vmlinux"},
		KernelCmdLine:     map[string]string{"console": "ttyS0", "quiet": ""},
		NetworkInterfaces: []infrav1.NetworkInterface{
			{GuestDeviceName: "eth0", Type: infrav1.IfaceTypeMacvtap},
			{GuestDeviceName: "eth1", Type: infrav1.IfaceTypeTap, Address: "192.168.100.10/24"},
		},
		Labels: map[string]string{"tier": "control-plane"},
	}}
}

// modify returns a copy of base changed by fn.
func modify[T any](base T, fn func(*T)) T {
	fn(&base)
	return base
}

func TestWebhooks(t *testing.T) {
	k := startKube(t)
	t.Run("ClusterAccepted", func(t *testing.T) { testClusterAccepted(t, k) })
	t.Run("ClusterRejected", func(t *testing.T) { testClusterRejected(t, k) })
	t.Run("ClusterUpdate", func(t *testing.T) { testClusterUpdate(t, k) })
	t.Run("ClusterTemplate", func(t *testing.T) { testClusterTemplate(t, k) })
	t.Run("MachineDefaultsGuestMAC", func(t *testing.T) { testMachineDefaults(t, k) })
	t.Run("MachineRejected", func(t *testing.T) { testMachineRejected(t, k) })
	t.Run("MachineUpdate", func(t *testing.T) { testMachineUpdate(t, k) })
	t.Run("MachineGenerateName", func(t *testing.T) { testMachineGenerateName(t, k) })
	t.Run("MachineTemplate", func(t *testing.T) { testMachineTemplate(t, k) })
}

func testClusterAccepted(t *testing.T, k *kube) {
	c := &infrav1.MicrovmCluster{ObjectMeta: objectMeta("accepted"), Spec: clusterSpec(t)}
	c.Spec.ControlPlaneEndpoint = clusterv1.APIEndpoint{Host: "192.168.10.5", Port: 6443}
	mustCreate(t, k, c)
	// The dynamic pool is checked the same way and accepted as well.
	d := &infrav1.MicrovmCluster{ObjectMeta: objectMeta("accepted-dynamic"), Spec: clusterSpec(t)}
	d.Spec.Placement = infrav1.Placement{DynamicPool: d.Spec.Placement.StaticPool}
	d.Spec.MicrovmProxy.Endpoint = "proxy.example.test:3128"
	mustCreate(t, k, d)
}

func testClusterRejected(t *testing.T, k *kube) {
	for _, tc := range []struct {
		name string
		mod  func(*infrav1.MicrovmClusterSpec)
		want []string
	}{
		{"endpoint without port", func(s *infrav1.MicrovmClusterSpec) { s.Placement.StaticPool.Hosts[0].Endpoint = "10.0.0.1" },
			[]string{`spec.placement.staticPool.hosts[0].endpoint: Invalid value: "10.0.0.1": not host:port`}},
		{"port zero", func(s *infrav1.MicrovmClusterSpec) { s.Placement.StaticPool.Hosts[0].Endpoint = "10.0.0.1:0" },
			[]string{`spec.placement.staticPool.hosts[0].endpoint: Invalid value: "10.0.0.1:0": port "0" is not a number in 1..65535`}},
		{"port too large", func(s *infrav1.MicrovmClusterSpec) { s.Placement.StaticPool.Hosts[1].Endpoint = "flint-2:70000" },
			[]string{`spec.placement.staticPool.hosts[1].endpoint`, `port "70000" is not a number in 1..65535`}},
		{"port not a number", func(s *infrav1.MicrovmClusterSpec) { s.Placement.StaticPool.Hosts[0].Endpoint = "10.0.0.1:grpc" },
			[]string{`port "grpc" is not a number`}},
		{"bad host name", func(s *infrav1.MicrovmClusterSpec) { s.Placement.StaticPool.Hosts[2].Endpoint = "bad_host!:9090" },
			[]string{`spec.placement.staticPool.hosts[2].endpoint`, `host "bad_host!" is neither an IP address nor a DNS name`}},
		{"no control-plane host", func(s *infrav1.MicrovmClusterSpec) {
			for i := range s.Placement.StaticPool.Hosts {
				s.Placement.StaticPool.Hosts[i].ControlplaneAllowed = ptr.To(false)
			}
		}, []string{"spec.placement.staticPool.hosts: Invalid value", "at least one host must allow control-plane machines"}},
		{"dynamic pool endpoint", func(s *infrav1.MicrovmClusterSpec) {
			s.Placement = infrav1.Placement{DynamicPool: &infrav1.HostPool{Hosts: []infrav1.Host{{Endpoint: "host-only"}}}}
		}, []string{`spec.placement.dynamicPool.hosts[0].endpoint: Invalid value: "host-only"`}},
		{"control-plane endpoint without host", func(s *infrav1.MicrovmClusterSpec) {
			s.ControlPlaneEndpoint = clusterv1.APIEndpoint{Port: 6443}
		}, []string{"spec.controlPlaneEndpoint.host: Required value"}},
		{"control-plane endpoint without port", func(s *infrav1.MicrovmClusterSpec) {
			s.ControlPlaneEndpoint = clusterv1.APIEndpoint{Host: "192.168.10.5"}
		}, []string{"spec.controlPlaneEndpoint.port: Invalid value: 0: must be a port in 1..65535"}},
		{"control-plane endpoint bad host", func(s *infrav1.MicrovmClusterSpec) {
			s.ControlPlaneEndpoint = clusterv1.APIEndpoint{Host: "vip..example", Port: 6443}
		}, []string{`spec.controlPlaneEndpoint.host: Invalid value: "vip..example"`}},
		{"proxy scheme", func(s *infrav1.MicrovmClusterSpec) { s.MicrovmProxy.Endpoint = "socks5://127.0.0.1:1080" },
			[]string{`spec.microvmProxy.endpoint: Invalid value: "socks5://127.0.0.1:1080": scheme "socks5" is not http or https`}},
		{"ssh key", func(s *infrav1.MicrovmClusterSpec) {
			s.SSHPublicKeys[0].AuthorizedKeys = append(s.SSHPublicKeys[0].AuthorizedKeys, "ssh-rsa nonsense")
		},
			[]string{"spec.sshPublicKeys[0].authorizedKeys[1]", "not an SSH public key"}},
		{"secret names", func(s *infrav1.MicrovmClusterSpec) {
			s.TLSSecretRef = "Not_A_Name"
			s.Placement.StaticPool.BasicAuthSecret = "also bad"
		}, []string{`spec.tlsSecretRef: Invalid value: "Not_A_Name": not a Secret name`, `spec.placement.staticPool.basicAuthSecret: Invalid value: "also bad"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := clusterSpec(t)
			tc.mod(&spec)
			err := k.Create(tctx(t), &infrav1.MicrovmCluster{ObjectMeta: objectMeta("rejected"), Spec: spec})
			wantDenied(t, err, clusterHook, tc.want...)
		})
	}
}

func testClusterUpdate(t *testing.T, k *kube) {
	ctx := tctx(t)
	c := &infrav1.MicrovmCluster{ObjectMeta: objectMeta("update"), Spec: clusterSpec(t)}
	mustCreate(t, k, c)

	// The endpoint may be filled in later (the controller does so from the
	// Cluster's)...
	c.Spec.ControlPlaneEndpoint = clusterv1.APIEndpoint{Host: "192.168.10.5", Port: 6443}
	if err := k.Update(ctx, c); err != nil {
		t.Fatalf("setting the endpoint: %v", err)
	}
	// ...but not changed once set.
	moved := c.DeepCopy()
	moved.Spec.ControlPlaneEndpoint.Port = 8443
	wantDenied(t, k.Update(ctx, moved), clusterHook, "spec.controlPlaneEndpoint: Forbidden: immutable once set", "192.168.10.5:6443")

	// Hosts may be added; an invalid one is refused.
	c.Spec.Placement.StaticPool.Hosts = append(c.Spec.Placement.StaticPool.Hosts, infrav1.Host{Endpoint: "10.0.0.4:9090"})
	if err := k.Update(ctx, c); err != nil {
		t.Fatalf("adding a host: %v", err)
	}
	bad := c.DeepCopy()
	bad.Spec.Placement.StaticPool.Hosts[3].Endpoint = "10.0.0.4"
	wantDenied(t, k.Update(ctx, bad), clusterHook, "spec.placement.staticPool.hosts[3].endpoint")

	// Metadata-only updates pass.
	c.Labels = map[string]string{"cluster.x-k8s.io/cluster-name": "update"}
	if err := k.Update(ctx, c); err != nil {
		t.Fatalf("labelling: %v", err)
	}

	// The topology controller's dry run may change the endpoint; a plain
	// dry run may not. Neither is persisted.
	dry := c.DeepCopy()
	dry.Spec.ControlPlaneEndpoint.Host = "192.168.10.6"
	wantDenied(t, k.Update(ctx, dry.DeepCopy(), client.DryRunAll), clusterHook, "spec.controlPlaneEndpoint: Forbidden")
	dry.Annotations = map[string]string{clusterv1.TopologyDryRunAnnotation: ""}
	if err := k.Update(ctx, dry, client.DryRunAll); err != nil {
		t.Fatalf("topology dry run: %v", err)
	}
	got := &infrav1.MicrovmCluster{}
	if err := k.Get(ctx, client.ObjectKeyFromObject(c), got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.ControlPlaneEndpoint.Host != "192.168.10.5" {
		t.Errorf("dry run persisted: endpoint %v", got.Spec.ControlPlaneEndpoint)
	}
}

func testClusterTemplate(t *testing.T, k *kube) {
	ctx := tctx(t)
	bad := &infrav1.MicrovmClusterTemplate{ObjectMeta: objectMeta("ct-bad")}
	bad.Spec.Template.Spec = clusterSpec(t)
	bad.Spec.Template.Spec.Placement.StaticPool.Hosts[0].Endpoint = "10.0.0.1:99999"
	wantDenied(t, k.Create(ctx, bad), clusterTemplateHook, `spec.template.spec.placement.staticPool.hosts[0].endpoint: Invalid value: "10.0.0.1:99999"`)

	ct := &infrav1.MicrovmClusterTemplate{ObjectMeta: objectMeta("ct")}
	ct.Spec.Template.Spec = clusterSpec(t)
	mustCreate(t, k, ct)

	changed := ct.DeepCopy()
	changed.Spec.Template.Spec.Placement.StaticPool.Hosts = changed.Spec.Template.Spec.Placement.StaticPool.Hosts[:1]
	wantDenied(t, k.Update(ctx, changed.DeepCopy()), clusterTemplateHook,
		"spec.template.spec.placement: Forbidden: a MicrovmClusterTemplate's spec.template.spec is immutable")
	changed.Annotations = map[string]string{clusterv1.TopologyDryRunAnnotation: ""}
	if err := k.Update(ctx, changed, client.DryRunAll); err != nil {
		t.Errorf("topology dry run: %v", err)
	}
	// Template metadata is not frozen.
	ct.Spec.Template.ObjectMeta.Labels = map[string]string{"env": "test"}
	if err := k.Update(ctx, ct); err != nil {
		t.Errorf("changing template metadata: %v", err)
	}
}

// checkGuestMAC checks that s is a unicast, locally-administered MAC.
func checkGuestMAC(t *testing.T, field, s string) {
	t.Helper()
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		t.Errorf("%s = %q is not a MAC address", field, s)
		return
	}
	if hw[0]&0x02 == 0 {
		t.Errorf("%s = %s is not locally administered", field, s)
	}
	if hw[0]&0x01 != 0 {
		t.Errorf("%s = %s is multicast", field, s)
	}
}

func testMachineDefaults(t *testing.T, k *kube) {
	ctx := tctx(t)
	const userMAC = "52:54:00:12:34:56"
	spec := machineSpec()
	spec.NetworkInterfaces = append(spec.NetworkInterfaces, infrav1.NetworkInterface{GuestDeviceName: "eth2", GuestMAC: userMAC, Type: infrav1.IfaceTypeTap})
	m := &infrav1.MicrovmMachine{ObjectMeta: objectMeta("mac-a"), Spec: spec}
	mustCreate(t, k, m)

	got := &infrav1.MicrovmMachine{}
	if err := k.Get(ctx, client.ObjectKeyFromObject(m), got); err != nil {
		t.Fatal(err)
	}
	ifs := got.Spec.NetworkInterfaces
	if len(ifs) != 3 {
		t.Fatalf("stored %d interfaces", len(ifs))
	}
	if ifs[2].GuestMAC != userMAC {
		t.Errorf("user MAC overwritten: %q", ifs[2].GuestMAC)
	}
	for i := range 2 {
		checkGuestMAC(t, fmt.Sprintf("networkInterfaces[%d].guestMac", i), ifs[i].GuestMAC)
		if want := DefaultGuestMAC("default", "mac-a", i); ifs[i].GuestMAC != want {
			t.Errorf("networkInterfaces[%d].guestMac = %s, want DefaultGuestMAC %s", i, ifs[i].GuestMAC, want)
		}
	}
	if ifs[0].GuestMAC == ifs[1].GuestMAC {
		t.Errorf("two interfaces share %s", ifs[0].GuestMAC)
	}

	// Stable: the same machine made again gets the same addresses.
	if err := k.Delete(ctx, got); err != nil {
		t.Fatal(err)
	}
	again := &infrav1.MicrovmMachine{ObjectMeta: objectMeta("mac-a"), Spec: spec}
	mustCreate(t, k, again)
	for i := range 2 {
		if again.Spec.NetworkInterfaces[i].GuestMAC != ifs[i].GuestMAC {
			t.Errorf("re-created machine: networkInterfaces[%d].guestMac %s, was %s", i, again.Spec.NetworkInterfaces[i].GuestMAC, ifs[i].GuestMAC)
		}
	}
	// Another machine gets other addresses.
	other := &infrav1.MicrovmMachine{ObjectMeta: objectMeta("mac-b"), Spec: machineSpec()}
	mustCreate(t, k, other)
	for i := range 2 {
		if other.Spec.NetworkInterfaces[i].GuestMAC == ifs[i].GuestMAC {
			t.Errorf("machines mac-a and mac-b share %s", ifs[i].GuestMAC)
		}
	}
}

func testMachineRejected(t *testing.T, k *kube) {
	for _, tc := range []struct {
		name string
		mod  func(*infrav1.MicrovmMachineSpec)
		want []string
	}{
		{"too many vCPUs", func(s *infrav1.MicrovmMachineSpec) { s.VCPU = 65 },
			[]string{"spec.vcpu: Invalid value: 65: must be between 1 and 64"}},
		{"too much memory", func(s *infrav1.MicrovmMachineSpec) { s.MemoryMb = MaxMemoryMiB + 1 },
			[]string{fmt.Sprintf("spec.memoryMb: Invalid value: %d: must be between 1024 and %d MiB", MaxMemoryMiB+1, MaxMemoryMiB)}},
		{"image reference", func(s *infrav1.MicrovmMachineSpec) { s.RootVolume.Image = "Not An/Image" },
			[]string{`spec.rootVolume.image: Invalid value: "Not An/Image": not an OCI image reference`}},
		{"duplicate volume id", func(s *infrav1.MicrovmMachineSpec) { s.AdditionalVolumes[0].ID = "root" },
			[]string{`spec.volumes[0].id: Duplicate value: "root (also spec.rootVolume.id)"`}},
		{"relative virtiofs path", func(s *infrav1.MicrovmMachineSpec) {
			s.AdditionalVolumes[0].Image, s.AdditionalVolumes[0].VirtiofsPath = "", "srv/share"
		}, []string{`spec.volumes[0].virtiofsPath: Invalid value: "srv/share": must be an absolute path`}},
		{"kernel file escapes", func(s *infrav1.MicrovmMachineSpec) { s.Kernel.Filename = "../vmlinux" },
			[]string{`spec.kernel.filename: Invalid value: "../vmlinux": escapes the image`}},
		{"cmdline whitespace", func(s *infrav1.MicrovmMachineSpec) { s.KernelCmdLine["console"] = "ttyS0 quiet" },
			[]string{`spec.kernelCmdline[console]: Invalid value: "ttyS0 quiet": value contains whitespace`}},
		{"multicast MAC", func(s *infrav1.MicrovmMachineSpec) { s.NetworkInterfaces[0].GuestMAC = "01:00:5e:00:00:01" },
			[]string{`spec.networkInterfaces[0].guestMac: Invalid value: "01:00:5e:00:00:01": a multicast address`}},
		{"duplicate MAC", func(s *infrav1.MicrovmMachineSpec) {
			s.NetworkInterfaces[0].GuestMAC, s.NetworkInterfaces[1].GuestMAC = "02:00:00:00:00:01", "02:00:00:00:00:01"
		}, []string{`spec.networkInterfaces[1].guestMac: Duplicate value`}},
		{"address not CIDR", func(s *infrav1.MicrovmMachineSpec) { s.NetworkInterfaces[1].Address = "192.168.100.10" },
			[]string{`spec.networkInterfaces[1].address: Invalid value: "192.168.100.10": not a CIDR address`}},
		{"guest device name", func(s *infrav1.MicrovmMachineSpec) { s.NetworkInterfaces[1].GuestDeviceName = "Eth-1" },
			[]string{`spec.networkInterfaces[1].guestDeviceName: Invalid value: "Eth-1": not a guest interface name`}},
		{"provider ID", func(s *infrav1.MicrovmMachineSpec) { s.ProviderID = "aws:///i-123" },
			[]string{`spec.providerID: Invalid value: "aws:///i-123": must have the form microvm://<host endpoint>/<flintlock uid>`}},
		{"ssh key", func(s *infrav1.MicrovmMachineSpec) {
			s.SSHPublicKeys = []infrav1.SSHPublicKey{{User: "root", AuthorizedKeys: []string{"not a key"}}}
		}, []string{"spec.sshPublicKeys[0].authorizedKeys[0]", "not an SSH public key"}},
		{"several at once", func(s *infrav1.MicrovmMachineSpec) { s.VCPU, s.Labels["bad key!"] = 100, "v" },
			[]string{"spec.vcpu: Invalid value: 100", `spec.labels[bad key!]`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := machineSpec()
			tc.mod(&spec)
			err := k.Create(tctx(t), &infrav1.MicrovmMachine{ObjectMeta: objectMeta("rejected"), Spec: spec})
			wantDenied(t, err, machineHook, tc.want...)
		})
	}
}

func testMachineUpdate(t *testing.T, k *kube) {
	ctx := tctx(t)
	m := &infrav1.MicrovmMachine{ObjectMeta: objectMeta("update"), Spec: machineSpec()}
	mustCreate(t, k, m)
	macs := []string{m.Spec.NetworkInterfaces[0].GuestMAC, m.Spec.NetworkInterfaces[1].GuestMAC}

	for _, tc := range []struct {
		name string
		mod  func(*infrav1.MicrovmMachineSpec)
		want string
	}{
		{"vcpu", func(s *infrav1.MicrovmMachineSpec) { s.VCPU = 4 }, "spec.vcpu: Forbidden: a MicrovmMachine's spec is immutable except providerID"},
		{"root image", func(s *infrav1.MicrovmMachineSpec) { s.RootVolume.Image = "capmvm/k8s-os:1.35.0" }, "spec.rootVolume: Forbidden"},
		{"guest MAC", func(s *infrav1.MicrovmMachineSpec) { s.NetworkInterfaces[0].GuestMAC = "02:11:22:33:44:55" }, "spec.networkInterfaces: Forbidden"},
		{"ssh keys", func(s *infrav1.MicrovmMachineSpec) {
			s.SSHPublicKeys = []infrav1.SSHPublicKey{{AuthorizedKeys: []string{authorizedKey(t)}}}
		}, "spec.sshPublicKeys: Forbidden"},
	} {
		changed := m.DeepCopy()
		tc.mod(&changed.Spec)
		wantDenied(t, k.Update(ctx, changed), machineHook, tc.want)
	}

	// providerID may be set (by the controller), and must be well formed.
	bad := m.DeepCopy()
	bad.Spec.ProviderID = "microvm://10.0.0.1:9090"
	wantDenied(t, k.Update(ctx, bad), machineHook, `spec.providerID: Invalid value: "microvm://10.0.0.1:9090"`)
	const id = "microvm://10.0.0.1:9090/01KAXR3QZ0N7W5D1N9B3C9Q0TQ"
	m.Spec.ProviderID = id
	if err := k.Update(ctx, m); err != nil {
		t.Fatalf("setting providerID: %v", err)
	}

	// Clearing a guest MAC is no change: the defaulter gives the same one
	// back. Metadata changes pass.
	m.Spec.NetworkInterfaces[0].GuestMAC = ""
	m.Labels = map[string]string{"role": "worker"}
	m.Finalizers = []string{infrav1.MachineFinalizer}
	if err := k.Update(ctx, m); err != nil {
		t.Fatalf("update with a cleared MAC and metadata: %v", err)
	}
	if m.Spec.NetworkInterfaces[0].GuestMAC != macs[0] || m.Spec.NetworkInterfaces[1].GuestMAC != macs[1] || m.Spec.ProviderID != id {
		t.Errorf("after update: MACs %s %s providerID %q, want %v %q", m.Spec.NetworkInterfaces[0].GuestMAC,
			m.Spec.NetworkInterfaces[1].GuestMAC, m.Spec.ProviderID, macs, id)
	}
	// The finalizer can be removed, and the machine deleted.
	m.Finalizers = nil
	if err := k.Update(ctx, m); err != nil {
		t.Fatalf("removing the finalizer: %v", err)
	}
	if err := k.Delete(ctx, m); err != nil {
		t.Fatalf("delete: %v", err)
	}
}

func testMachineGenerateName(t *testing.T, k *kube) {
	// The API server names the object after the mutating webhooks; the
	// machine still gets unique, valid addresses, kept once stored.
	ctx := tctx(t)
	var seen []string
	for range 2 {
		m := &infrav1.MicrovmMachine{ObjectMeta: metav1.ObjectMeta{Namespace: "default", GenerateName: "gen-"}, Spec: machineSpec()}
		if err := k.Create(ctx, m); err != nil {
			t.Fatalf("create with generateName: %v", err)
		}
		for i := range 2 {
			mac := m.Spec.NetworkInterfaces[i].GuestMAC
			checkGuestMAC(t, fmt.Sprintf("%s networkInterfaces[%d].guestMac", m.Name, i), mac)
			if slices.Contains(seen, mac) {
				t.Errorf("%s: networkInterfaces[%d].guestMac %s is not unique", m.Name, i, mac)
			}
			seen = append(seen, mac)
		}
		m.Labels = map[string]string{"updated": "yes"}
		before := m.Spec.NetworkInterfaces[0].GuestMAC
		if err := k.Update(ctx, m); err != nil {
			t.Fatalf("update: %v", err)
		}
		if m.Spec.NetworkInterfaces[0].GuestMAC != before {
			t.Errorf("%s: guestMac changed on update from %s to %s", m.Name, before, m.Spec.NetworkInterfaces[0].GuestMAC)
		}
	}
}

func testMachineTemplate(t *testing.T, k *kube) {
	ctx := tctx(t)
	k.warnings.take()
	mt := &infrav1.MicrovmMachineTemplate{ObjectMeta: objectMeta("mt")}
	mt.Spec.Template.Spec = machineSpec()
	mustCreate(t, k, mt)
	if w := k.warnings.take(); len(w) != 0 {
		t.Errorf("warnings for a plain template: %q", w)
	}
	// Templates are not defaulted: every machine gets its own MAC.
	if mac := mt.Spec.Template.Spec.NetworkInterfaces[0].GuestMAC; mac != "" {
		t.Errorf("template got guestMac %s", mac)
	}

	withID := &infrav1.MicrovmMachineTemplate{ObjectMeta: objectMeta("mt-bad")}
	withID.Spec.Template.Spec = machineSpec()
	withID.Spec.Template.Spec.ProviderID = "microvm://10.0.0.1:9090/x"
	withID.Spec.Template.Spec.VCPU = 128
	wantDenied(t, k.Create(ctx, withID), machineTemplateHook,
		"spec.template.spec.providerID: Forbidden: set by the controller for each machine; must be empty in a template",
		"spec.template.spec.vcpu: Invalid value: 128: must be between 1 and 64")

	fixed := &infrav1.MicrovmMachineTemplate{ObjectMeta: objectMeta("mt-mac")}
	fixed.Spec.Template.Spec = machineSpec()
	fixed.Spec.Template.Spec.NetworkInterfaces[1].GuestMAC = "02:00:00:00:00:07"
	mustCreate(t, k, fixed)
	if w := k.warnings.take(); len(w) != 1 || !strings.Contains(w[0], "spec.template.spec.networkInterfaces[1].guestMac: 02:00:00:00:00:07 is given to every machine") {
		t.Errorf("warnings for a fixed guestMac: %q", w)
	}

	changed := mt.DeepCopy()
	changed.Spec.Template.Spec.MemoryMb = 4096
	wantDenied(t, k.Update(ctx, changed.DeepCopy()), machineTemplateHook,
		"spec.template.spec.memoryMb: Forbidden: a MicrovmMachineTemplate's spec.template.spec is immutable")
	// The topology controller's dry run passes, but is still validated.
	changed.Annotations = map[string]string{clusterv1.TopologyDryRunAnnotation: ""}
	if err := k.Update(ctx, changed.DeepCopy(), client.DryRunAll); err != nil {
		t.Errorf("topology dry run: %v", err)
	}
	changed.Spec.Template.Spec.VCPU = 99
	wantDenied(t, k.Update(ctx, changed, client.DryRunAll), machineTemplateHook, "spec.template.spec.vcpu: Invalid value: 99")

	// Template metadata may change.
	mt.Spec.Template.ObjectMeta.Labels = map[string]string{"pool": "a"}
	if err := k.Update(ctx, mt); err != nil {
		t.Errorf("changing template metadata: %v", err)
	}
	got := &infrav1.MicrovmMachineTemplate{}
	if err := k.Get(ctx, client.ObjectKeyFromObject(mt), got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Template.Spec.MemoryMb != 2048 || got.Spec.Template.ObjectMeta.Labels["pool"] != "a" {
		t.Errorf("stored template: memory %d labels %v", got.Spec.Template.Spec.MemoryMb, got.Spec.Template.ObjectMeta.Labels)
	}
}
