package controller_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	clusterv1 "sigs.k8s.io/cluster-api/api/core/v1beta2"
	"sigs.k8s.io/cluster-api/util/conditions"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/controller"
	"github.com/liquidmetal-go/liquidmetal/internal/controller/flintlocktest"
)

// wait polls the machine until check passes.
func (f *fixture) wait(name, what string, check func(mm *infrav1.MicrovmMachine) error) *infrav1.MicrovmMachine {
	f.t.Helper()
	var mm *infrav1.MicrovmMachine
	eventually(f.t, 20*time.Second, name+": "+what, func() error {
		if mm = f.get(name); mm == nil {
			return errors.New("gone")
		}
		return check(mm)
	})
	return mm
}

func vmState(want infrav1.VMState) func(*infrav1.MicrovmMachine) error {
	return func(mm *infrav1.MicrovmMachine) error {
		if got := ptr.Deref(mm.Status.VMState, ""); got != want {
			return fmt.Errorf("vmState %q, want %q; conditions %+v", got, want, mm.Status.Conditions)
		}
		return nil
	}
}

func TestMachineWaitsForClusterInfrastructureAndBootstrapData(t *testing.T) {
	f := newFixture(t, fixtureOpts{hosts: []hostSpec{{controlPlane: true}}})
	f.machine("m0", machineOpts{noBootstrap: true})
	mm := f.condition("m0", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.WaitingForClusterInfrastructureReadyReason)
	if !slices.Contains(mm.Finalizers, infrav1.MachineFinalizer) {
		t.Errorf("finalizers = %v", mm.Finalizers)
	}
	if !conditions.IsFalse(mm, infrav1.ReadyCondition) {
		t.Errorf("Ready = %+v", conditions.Get(mm, infrav1.ReadyCondition))
	}

	f.provision()
	f.condition("m0", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.WaitingForBootstrapDataReason)
	if n := f.hosts[0].Calls("CreateMicroVM"); n != 0 {
		t.Fatalf("%d microVMs requested before the bootstrap data existed", n)
	}

	// The bootstrap provider writes the data secret.
	f.create(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "m0-data", Namespace: f.ns},
		Data:       map[string][]byte{"value": []byte("#cloud-config\n")},
	})
	m := &clusterv1.Machine{}
	if err := k8s.Get(f.ctx, client.ObjectKey{Namespace: f.ns, Name: "m0"}, m); err != nil {
		t.Fatal(err)
	}
	base := m.DeepCopy()
	m.Spec.Bootstrap.DataSecretName = ptr.To("m0-data")
	if err := k8s.Patch(f.ctx, m, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	f.created("m0")
	f.condition("m0", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.MicrovmPendingReason)
}

// TestMachineStates drives microVMs through every flintlock state and
// checks what the machine reports.
func TestMachineStates(t *testing.T) {
	f := newFixture(t, fixtureOpts{
		hosts:       []hostSpec{{controlPlane: true}},
		provisioned: true,
		sshKeys:     []infrav1.SSHPublicKey{{AuthorizedKeys: []string{"ssh-ed25519 AAAAcluster"}}},
	})
	host := f.hosts[0]
	set := func(uid string, st types.MicroVMStatus_MicroVMState, reason, msg string) {
		t.Helper()
		if err := host.SetState(uid, st, reason, msg); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("pending, running, then failed", func(t *testing.T) {
		f.t = t
		f.machine("a", machineOpts{})
		mm, srv, uid := f.created("a")
		if want := controller.ProviderID(host.Addr(), uid); mm.Spec.ProviderID != want || srv != host {
			t.Fatalf("provider ID %q, want %q", mm.Spec.ProviderID, want)
		}
		mm = f.wait("a", "pending", vmState(infrav1.VMStatePending))
		if c := conditions.Get(mm, infrav1.MicrovmReadyCondition); c == nil || c.Reason != infrav1.MicrovmPendingReason {
			t.Fatalf("MicrovmReady = %+v", c)
		}
		if mm.Status.Ready || ptr.Deref(mm.Status.Initialization.Provisioned, false) {
			t.Fatalf("pending machine is ready or provisioned: %+v", mm.Status)
		}

		set(uid, types.MicroVMStatus_CREATED, "", "")
		mm = f.wait("a", "running and provisioned", func(mm *infrav1.MicrovmMachine) error {
			if err := vmState(infrav1.VMStateRunning)(mm); err != nil {
				return err
			}
			if !mm.Status.Ready || !ptr.Deref(mm.Status.Initialization.Provisioned, false) || !conditions.IsTrue(mm, infrav1.ReadyCondition) {
				return fmt.Errorf("status %+v", mm.Status)
			}
			return nil
		})
		if c := conditions.Get(mm, infrav1.MicrovmReadyCondition); c.Reason != infrav1.MicrovmRunningReason {
			t.Errorf("MicrovmReady = %+v", c)
		}
		if c := conditions.Get(mm, infrav1.HostReachableCondition); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("HostReachable = %+v", c)
		}
		// DHCP: the host's address stands in.
		wantAddrs := []clusterv1.MachineAddress{{Type: clusterv1.MachineHostName, Address: "a"}, {Type: clusterv1.MachineExternalIP, Address: "127.0.0.1"}}
		if !reflect.DeepEqual(mm.Status.Addresses, wantAddrs) {
			t.Errorf("addresses = %+v, want %+v", mm.Status.Addresses, wantAddrs)
		}

		set(uid, types.MicroVMStatus_FAILED, "VMMExited", "qemu exited with status 1")
		mm = f.wait("a", "failed", vmState(infrav1.VMStateFailed))
		f.wait("a", "failure reason", func(mm *infrav1.MicrovmMachine) error {
			if ptr.Deref(mm.Status.FailureReason, "") != infrav1.FailureReasonUpdateError {
				return fmt.Errorf("failureReason = %v", mm.Status.FailureReason)
			}
			if msg := ptr.Deref(mm.Status.FailureMessage, ""); !strings.Contains(msg, "qemu exited with status 1") {
				return fmt.Errorf("failureMessage = %q", msg)
			}
			// Provisioned stays true once set (Cluster API contract).
			if mm.Status.Ready || !ptr.Deref(mm.Status.Initialization.Provisioned, false) {
				return fmt.Errorf("status %+v", mm.Status)
			}
			return nil
		})
		f.condition("a", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.MicrovmFailedReason)
		// Terminal: the machine is no longer looked at.
		gets := host.Calls("GetMicroVM")
		time.Sleep(1500 * time.Millisecond)
		if n := host.Calls("GetMicroVM") - gets; n > 1 {
			t.Errorf("%d GetMicroVM calls for a failed machine", n)
		}
	})

	t.Run("failed before running", func(t *testing.T) {
		f.t = t
		f.machine("b", machineOpts{})
		_, _, uid := f.created("b")
		set(uid, types.MicroVMStatus_FAILED, "ImagePullFailed", "pull example.org/node:1.34: not found")
		f.wait("b", "create error", func(mm *infrav1.MicrovmMachine) error {
			if ptr.Deref(mm.Status.FailureReason, "") != infrav1.FailureReasonCreateError || ptr.Deref(mm.Status.VMState, "") != infrav1.VMStateFailed {
				return fmt.Errorf("status %+v", mm.Status)
			}
			return nil
		})
	})

	t.Run("deleting, unknown, gone", func(t *testing.T) {
		f.t = t
		f.machine("c", machineOpts{})
		_, _, uid := f.created("c")
		set(uid, types.MicroVMStatus_CREATED, "", "")
		f.wait("c", "running", vmState(infrav1.VMStateRunning))

		// Hosts with the power service: stopped, running again, and a
		// host that reports RUNNING as the state itself.
		if err := host.SetDetailedState(uid, types.MicroVMStatus_STOPPED); err != nil {
			t.Fatal(err)
		}
		f.condition("c", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, controller.MicrovmStoppedReason)
		f.wait("c", "stopped: not ready", func(mm *infrav1.MicrovmMachine) error {
			if mm.Status.Ready || !ptr.Deref(mm.Status.Initialization.Provisioned, false) {
				return fmt.Errorf("status %+v", mm.Status)
			}
			return vmState(infrav1.VMStateUnknown)(mm)
		})
		if err := host.SetDetailedState(uid, types.MicroVMStatus_RUNNING); err != nil {
			t.Fatal(err)
		}
		f.condition("c", infrav1.MicrovmReadyCondition, metav1.ConditionTrue, infrav1.MicrovmRunningReason)
		set(uid, types.MicroVMStatus_RUNNING, "", "")
		if err := host.SetDetailedState(uid, types.MicroVMStatus_PENDING); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		f.wait("c", "running", vmState(infrav1.VMStateRunning))

		set(uid, types.MicroVMStatus_DELETING, "", "")
		f.wait("c", "deleted", vmState(infrav1.VMStateDeleted))
		f.condition("c", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.MicrovmDeletedReason)

		set(uid, types.MicroVMStatus_MicroVMState(42), "", "")
		f.wait("c", "unknown", vmState(infrav1.VMStateUnknown))
		f.condition("c", infrav1.MicrovmReadyCondition, metav1.ConditionUnknown, infrav1.MicrovmUnknownStateReason)

		host.Remove(uid)
		mm := f.wait("c", "gone from the host", func(mm *infrav1.MicrovmMachine) error {
			if ptr.Deref(mm.Status.FailureReason, "") != infrav1.FailureReasonUpdateError {
				return fmt.Errorf("status %+v", mm.Status)
			}
			return vmState(infrav1.VMStateDeleted)(mm)
		})
		if msg := ptr.Deref(mm.Status.FailureMessage, ""); !strings.Contains(msg, uid) {
			t.Errorf("failureMessage %q does not name the microVM", msg)
		}
	})
}

// TestCreateRequest checks the microVM a machine asks for: the VM fields,
// the uid label and the cloud-init documents.
func TestCreateRequest(t *testing.T) {
	f := newFixture(t, fixtureOpts{
		hosts:       []hostSpec{{controlPlane: true}},
		provisioned: true,
		sshKeys:     []infrav1.SSHPublicKey{{AuthorizedKeys: []string{"ssh-ed25519 AAAAcluster"}}},
	})
	f.machine("plain", machineOpts{})
	f.machine("own-keys", machineOpts{
		sshKeys:    []infrav1.SSHPublicKey{{User: "ops", AuthorizedKeys: []string{"ssh-ed25519 AAAAops"}}},
		interfaces: []infrav1.NetworkInterface{{GuestDeviceName: "eth0", Type: infrav1.IfaceTypeTap, GuestMAC: "02:00:00:00:00:01", Address: "10.0.0.5/24"}},
	})
	mm, host, uid := f.created("plain")
	vm := host.VM(f.ns, "plain")
	if vm == nil || vm.GetSpec().GetUid() != uid {
		t.Fatalf("host has %v, want uid %s", vm, uid)
	}
	s := vm.GetSpec()
	if s.Vcpu != 2 || s.MemoryInMb != 2048 || s.Kernel.GetImage() != "example.org/kernel:6.1" ||
		s.Kernel.GetFilename() != "boot/vmlinux" || s.Kernel.GetCmdline()["console"] != "ttyS0" || !s.Kernel.GetAddNetworkConfig() {
		t.Errorf("vcpu/memory/kernel = %d %d %v", s.Vcpu, s.MemoryInMb, s.Kernel)
	}
	if r := s.RootVolume; r.GetId() != "root" || r.GetSource().GetContainerSource() != "example.org/node:1.34" || r.GetMountPoint() != "/" {
		t.Errorf("root volume = %v", r)
	}
	if ifs := s.Interfaces; len(ifs) != 1 || ifs[0].DeviceId != "eth0" || ifs[0].Type != types.NetworkInterface_MACVTAP {
		t.Errorf("interfaces = %v", ifs)
	}
	if s.Labels[controller.MachineUIDLabel] != string(mm.UID) || s.Labels["role"] != "node" || s.Labels[clusterv1.ClusterNameLabel] != "c1" {
		t.Errorf("labels = %v", s.Labels)
	}

	doc := func(vm *types.MicroVM, name string) []byte {
		t.Helper()
		b, err := base64.StdEncoding.DecodeString(vm.GetSpec().GetMetadata()[name])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return b
	}
	var md map[string]any
	if err := yaml.Unmarshal(doc(vm, "meta-data"), &md); err != nil {
		t.Fatal(err)
	}
	wantMD := map[string]any{"local_hostname": "plain", "platform": "liquid_metal", "vm_host": host.Addr(), "cluster_name": "c1"}
	if !reflect.DeepEqual(md, wantMD) {
		// instance_id is flintlockd's to add: only it knows the uid.
		t.Errorf("meta-data = %v, want %v", md, wantMD)
	}
	if got := string(doc(vm, "user-data")); got != "#cloud-config\nruncmd: [echo plain]\n" {
		t.Errorf("user-data = %q, want the bootstrap data", got)
	}
	vd := doc(vm, "vendor-data")
	if !strings.HasPrefix(string(vd), "#cloud-config\n") {
		t.Errorf("vendor-data is not a cloud-config: %q", vd)
	}
	var vdm map[string]any
	if err := yaml.Unmarshal(vd, &vdm); err != nil {
		t.Fatal(err)
	}
	if vdm["hostname"] != "plain" || fmt.Sprint(vdm["ssh_authorized_keys"]) != "[ssh-ed25519 AAAAcluster]" || vdm["users"] != nil {
		t.Errorf("vendor-data = %v", vdm)
	}

	// A machine's own keys replace the cluster's; a static address is
	// reported.
	mm, host, _ = f.created("own-keys")
	vm = host.VM(f.ns, "own-keys")
	vdm = nil
	if err := yaml.Unmarshal(doc(vm, "vendor-data"), &vdm); err != nil {
		t.Fatal(err)
	}
	if vdm["ssh_authorized_keys"] != nil || fmt.Sprint(vdm["users"]) != "[default map[name:ops ssh_authorized_keys:[ssh-ed25519 AAAAops]]]" {
		t.Errorf("vendor-data = %v", vdm)
	}
	iface := vm.GetSpec().Interfaces[0]
	if iface.Type != types.NetworkInterface_TAP || iface.GetGuestMac() != "02:00:00:00:00:01" || iface.GetAddress().GetAddress() != "10.0.0.5/24" {
		t.Errorf("interface = %v", iface)
	}
	if err := host.SetState(vm.GetSpec().GetUid(), types.MicroVMStatus_CREATED, "", ""); err != nil {
		t.Fatal(err)
	}
	f.wait("own-keys", "static address", func(mm *infrav1.MicrovmMachine) error {
		want := []clusterv1.MachineAddress{{Type: clusterv1.MachineHostName, Address: "own-keys"}, {Type: clusterv1.MachineInternalIP, Address: "10.0.0.5"}}
		if !reflect.DeepEqual(mm.Status.Addresses, want) {
			return fmt.Errorf("addresses %+v", mm.Status.Addresses)
		}
		return nil
	})
}

func TestInvalidConfigurationIsTerminal(t *testing.T) {
	f := newFixture(t, fixtureOpts{hosts: []hostSpec{{controlPlane: true}}, provisioned: true})
	f.hosts[0].OnCreate(func(spec *types.MicroVMSpec) error {
		return status.Error(codes.InvalidArgument, "microvm.kernel.image: not a valid reference")
	})
	f.machine("bad", machineOpts{})
	mm := f.wait("bad", "invalid configuration", func(mm *infrav1.MicrovmMachine) error {
		if ptr.Deref(mm.Status.FailureReason, "") != infrav1.FailureReasonInvalidConfiguration {
			return fmt.Errorf("status %+v", mm.Status)
		}
		return nil
	})
	if msg := ptr.Deref(mm.Status.FailureMessage, ""); !strings.Contains(msg, "not a valid reference") {
		t.Errorf("failureMessage = %q", msg)
	}
	f.condition("bad", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.InvalidConfigurationReason)
	calls := f.hosts[0].Calls("CreateMicroVM")
	time.Sleep(time.Second)
	if n := f.hosts[0].Calls("CreateMicroVM"); n != calls || n != 1 {
		t.Errorf("CreateMicroVM called %d times, want 1 (terminal)", n)
	}
}

// TestPlacementAcrossHosts: control-plane machines only where allowed, a
// deployment spread evenly, a failure domain honoured.
func TestPlacementAcrossHosts(t *testing.T) {
	f := newFixture(t, fixtureOpts{
		hosts:       []hostSpec{{controlPlane: true}, {controlPlane: false}, {controlPlane: true}},
		provisioned: true,
	})
	forbidden := f.addrs[1]
	hostOf := func(name string) string {
		t.Helper()
		mm := f.wait(name, "placed", func(mm *infrav1.MicrovmMachine) error {
			if mm.Annotations[controller.HostAnnotation] == "" {
				return errors.New("not placed yet")
			}
			return nil
		})
		return mm.Annotations[controller.HostAnnotation]
	}

	for i := range 5 {
		name := fmt.Sprintf("cp-%d", i)
		f.machine(name, machineOpts{controlPlane: true})
		if h := hostOf(name); h == forbidden {
			t.Fatalf("control-plane machine %s placed on %s, which does not allow the control plane", name, h)
		}
	}

	counts := map[string]int{}
	for i := range 6 {
		name := fmt.Sprintf("md-0-%d", i)
		f.machine(name, machineOpts{deployment: "md-0"})
		counts[hostOf(name)]++
	}
	for _, a := range f.addrs {
		if counts[a] != 2 {
			t.Fatalf("6 machines of md-0 over 3 hosts: %v", counts)
		}
	}

	f.machine("pinned", machineOpts{deployment: "md-1", failureDomain: f.addrs[2]})
	if h := hostOf("pinned"); h != f.addrs[2] {
		t.Fatalf("machine with failure domain %s placed on %s", f.addrs[2], h)
	}
	f.machine("cp-pinned-badly", machineOpts{controlPlane: true, failureDomain: forbidden})
	f.condition("cp-pinned-badly", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.PlacementFailedReason)

	// The provider ID and the microVM follow the placement.
	for i := range 6 {
		name := fmt.Sprintf("md-0-%d", i)
		mm, host, _ := f.created(name)
		if host.Addr() != mm.Annotations[controller.HostAnnotation] || host.VM(f.ns, name) == nil {
			t.Fatalf("%s: provider ID %s, placed on %s", name, mm.Spec.ProviderID, mm.Annotations[controller.HostAnnotation])
		}
	}
}

func TestNoHostAllowsTheControlPlane(t *testing.T) {
	f := newFixture(t, fixtureOpts{hosts: []hostSpec{{controlPlane: false}}, provisioned: true})
	f.machine("cp", machineOpts{controlPlane: true})
	mm := f.condition("cp", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.PlacementFailedReason)
	if c := conditions.Get(mm, infrav1.MicrovmReadyCondition); !strings.Contains(c.Message, "no host allows control-plane machines") {
		t.Errorf("message = %q", c.Message)
	}
	if mm.Annotations[controller.HostAnnotation] != "" || f.hosts[0].Calls("CreateMicroVM") != 0 {
		t.Fatal("a control-plane machine was placed on a host that does not allow it")
	}
	// A worker goes there.
	f.machine("w", machineOpts{})
	f.created("w")
}

func TestDynamicPlacement(t *testing.T) {
	f := newFixture(t, fixtureOpts{
		hosts: []hostSpec{
			{controlPlane: true, opts: flintlocktest.Options{TotalVCPU: 16, TotalMemoryMiB: 8 << 10}},
			{controlPlane: false, opts: flintlocktest.Options{TotalVCPU: 16, TotalMemoryMiB: 64 << 10}},
		},
		dynamic:     true,
		provisioned: true,
	})
	f.machine("w0", machineOpts{})
	if _, host, _ := f.created("w0"); host != f.hosts[1] {
		t.Fatalf("worker placed on %s, want the roomier %s", host.Addr(), f.addrs[1])
	}
	f.machine("cp0", machineOpts{controlPlane: true})
	if _, host, _ := f.created("cp0"); host != f.hosts[0] {
		t.Fatalf("control-plane machine placed on %s, want %s", host.Addr(), f.addrs[0])
	}
	if n := f.hosts[0].Calls("GetCapacity") + f.hosts[1].Calls("GetCapacity"); n < 2 {
		t.Fatalf("GetCapacity called %d times", n)
	}
	// Too big for any host.
	f.machine("huge", machineOpts{memoryMb: 128 << 10})
	f.condition("huge", infrav1.MicrovmReadyCondition, metav1.ConditionFalse, infrav1.PlacementFailedReason)
}
