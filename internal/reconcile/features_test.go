package reconcile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/images"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/cloudhypervisor"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/firecracker"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/qemu"
)

// realProviders returns the three providers as flintlockd makes them.
// Firecracker and Cloud Hypervisor are given stand-in binaries: only their
// declared capabilities are used, no VMM is started.
func realProviders(t *testing.T) map[string]vmm.Provider {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"firecracker", "cloud-hypervisor", "virtiofsd"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	q, err := qemu.New(qemu.Options{Virtiofsd: filepath.Join(dir, "virtiofsd")})
	if err != nil {
		t.Fatal(err)
	}
	fc, err := firecracker.New(firecracker.Options{Binary: filepath.Join(dir, "firecracker")})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := cloudhypervisor.New(cloudhypervisor.Options{Binary: filepath.Join(dir, "cloud-hypervisor"), Virtiofsd: filepath.Join(dir, "virtiofsd")})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]vmm.Provider{q.Name(): q, fc.Name(): fc, ch.Name(): ch}
}

func TestAdmitCapabilities(t *testing.T) {
	providers := realProviders(t)
	r := &Reconciler{cfg: Config{Providers: providers}}
	share := "/srv/share"
	img := "reg.test/root:1"
	withShare := func(s *types.MicroVMSpec) {
		s.AdditionalVolumes = append(s.AdditionalVolumes, &types.Volume{Id: "data", Source: &types.VolumeSource{VirtiofsSource: &share}})
	}
	withMacvtap := func(s *types.MicroVMSpec) {
		s.Interfaces = append(s.Interfaces,
			&types.NetworkInterface{DeviceId: "eth0", Type: types.NetworkInterface_TAP},
			&types.NetworkInterface{DeviceId: "eth1", Type: types.NetworkInterface_MACVTAP})
	}
	withAgent := func(s *types.MicroVMSpec) { s.AllowGuestAgent = true }
	for _, tc := range []struct {
		provider string
		set      []func(*types.MicroVMSpec)
		want     []string // each in the error; none: admitted
	}{
		{provider: qemu.Name},
		{provider: qemu.Name, set: []func(*types.MicroVMSpec){withMacvtap}},
		{provider: qemu.Name, set: []func(*types.MicroVMSpec){withShare}},
		{provider: qemu.Name, set: []func(*types.MicroVMSpec){withShare, withAgent},
			want: []string{`provider "qemu" does not support`, "allow_guest_agent"}},
		{provider: firecracker.Name, set: []func(*types.MicroVMSpec){withAgent}},
		{provider: firecracker.Name, set: []func(*types.MicroVMSpec){withMacvtap}, want: []string{"interfaces[1].type: macvtap"}},
		{provider: firecracker.Name, set: []func(*types.MicroVMSpec){withShare}, want: []string{"virtio-fs"}},
		{provider: cloudhypervisor.Name, set: []func(*types.MicroVMSpec){withShare, withMacvtap, withAgent}},
		{provider: "nope", want: []string{`provider "nope" is not available`}},
	} {
		spec := &types.MicroVMSpec{Id: "vm", Provider: &tc.provider,
			RootVolume: &types.Volume{Id: "root", Source: &types.VolumeSource{ContainerSource: &img}}}
		for _, f := range tc.set {
			f(spec)
		}
		err := r.Admit(spec)
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.provider, err)
			}
			continue
		}
		if !errdefs.IsFailedPrecondition(err) {
			t.Errorf("%s: %v, want failed precondition", tc.provider, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", tc.provider, err, w)
			}
		}
	}
}

func TestKernelPaths(t *testing.T) {
	providers := realProviders(t)
	qemuCaps, fcCaps, chCaps := providers[qemu.Name].Capabilities(), providers[firecracker.Name].Capabilities(), providers[cloudhypervisor.Name].Capabilities()
	for _, tc := range []struct {
		filename string
		caps     vmm.Capabilities
		want     []string
	}{
		{"", qemuCaps, images.KernelPaths},
		{"", fcCaps, []string{"boot/vmlinux", "vmlinux"}},
		{"", chCaps, []string{"boot/vmlinux", "vmlinux"}},
		{"boot/vmlinuz", fcCaps, []string{"boot/vmlinuz"}}, // the spec decides
		{"k/bzImage", qemuCaps, []string{"k/bzImage"}},
	} {
		if got := kernelPaths(tc.filename, tc.caps); !slices.Equal(got, tc.want) {
			t.Errorf("kernelPaths(%q, %+v) = %q, want %q", tc.filename, tc.caps, got, tc.want)
		}
	}
	if images.KernelPaths[0] != "boot/vmlinuz" {
		t.Fatalf("images.KernelPaths changed: %q", images.KernelPaths)
	}
}

func TestCmdlineRoot(t *testing.T) {
	img, share := "reg.test/root:1", "/srv/root"
	for _, tc := range []struct {
		root *types.Volume
		want string
	}{
		{nil, "console=ttyS0 panic=1 reboot=k"},
		{&types.Volume{Id: "root", Source: &types.VolumeSource{ContainerSource: &img}}, "console=ttyS0 panic=1 reboot=k root=/dev/vda rw"},
		{&types.Volume{Id: "rootfs", Source: &types.VolumeSource{VirtiofsSource: &share}}, "console=ttyS0 panic=1 reboot=k root=rootfs rootfstype=virtiofs rw"},
	} {
		b := &builder{vm: &types.MicroVM{Spec: &types.MicroVMSpec{RootVolume: tc.root, Kernel: &types.Kernel{}}}}
		if got := b.cmdline(); got != tc.want {
			t.Errorf("cmdline = %q, want %q", got, tc.want)
		}
	}
}

// fakeMetadata records what the reconciler registers.
type fakeMetadata struct {
	registered map[string][]string
	docs       map[string]map[string][]byte
	err        error
}

func (m *fakeMetadata) Register(uid string, devices []string, docs map[string][]byte) error {
	if m.err != nil {
		return m.err
	}
	m.registered[uid] = devices
	m.docs[uid] = docs
	return nil
}

func (m *fakeMetadata) Unregister(uid string) error {
	delete(m.registered, uid)
	return nil
}

// The metadata step registers the VM's TAPs (not its macvtaps) with the
// same documents the cidata disk gets, network-config matching the MACs
// chosen for the interfaces.
func TestRegisterMetadata(t *testing.T) {
	md := &fakeMetadata{registered: map[string][]string{}, docs: map[string]map[string][]byte{}}
	uid := "01JTESTMETADATA0000000000"
	spec := &types.MicroVMSpec{
		Id: "vm", Namespace: "ns", Uid: &uid,
		Kernel: &types.Kernel{Image: "reg.test/kernel:1", AddNetworkConfig: true},
		Interfaces: []*types.NetworkInterface{
			{DeviceId: "eth0", Type: types.NetworkInterface_TAP},
			{DeviceId: "eth1", Type: types.NetworkInterface_MACVTAP},
			{DeviceId: "eth2", Type: types.NetworkInterface_TAP},
		},
	}
	b := &builder{r: &Reconciler{cfg: Config{Metadata: md}}, vm: &types.MicroVM{Spec: spec},
		devices: map[string]*types.NetworkInterfaceStatus{
			"eth0": {HostDeviceName: "flabc0t0", MacAddress: "02:aa:00:00:00:01"},
			"eth1": {HostDeviceName: "flabc1m1", MacAddress: "02:aa:00:00:00:02"},
			"eth2": {HostDeviceName: "flabc2t2", MacAddress: "02:aa:00:00:00:03"},
		}}
	ctx := context.Background()
	if err := b.registerMetadata(ctx); err != nil {
		t.Fatal(err)
	}
	if got := md.registered[uid]; !slices.Equal(got, []string{"flabc0t0", "flabc2t2"}) {
		t.Fatalf("registered devices %q, want the TAPs", got)
	}
	docs := md.docs[uid]
	if !strings.Contains(string(docs["meta-data"]), uid) || string(docs["user-data"]) == "" {
		t.Errorf("documents: %q", docs)
	}
	nc := string(docs["network-config"])
	for _, mac := range []string{"02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"} {
		if !strings.Contains(nc, mac) {
			t.Errorf("network-config does not match %s:\n%s", mac, nc)
		}
	}
	// The disk and the VMM get the very same documents.
	again, err := b.documents()
	if err != nil || fmt.Sprint(again) != fmt.Sprint(docs) {
		t.Errorf("documents differ between the metadata service and the disk: %v", err)
	}

	// Registered again on every pass: the data is replaced.
	md.registered = map[string][]string{}
	if err := b.registerMetadata(ctx); err != nil || len(md.registered[uid]) != 2 {
		t.Fatalf("second pass: %v, %v", err, md.registered)
	}

	// A service refusing the data for good is a permanent failure.
	md.err = fmt.Errorf("bad: %w", errdefs.ErrInvalidArgument)
	if err := b.registerMetadata(ctx); !isPermanent(err) {
		t.Errorf("invalid argument from the service: %v, want permanent", err)
	}
	md.err = errors.New("transient")
	if err := b.registerMetadata(ctx); err == nil || isPermanent(err) {
		t.Errorf("transient error: %v, want a retry", err)
	}
	md.err = nil

	// Only macvtaps, or no service: nothing registered.
	md.registered = map[string][]string{}
	b2 := &builder{r: b.r, vm: &types.MicroVM{Spec: &types.MicroVMSpec{Id: "m", Uid: &uid, Kernel: &types.Kernel{},
		Interfaces: []*types.NetworkInterface{{DeviceId: "eth0", Type: types.NetworkInterface_MACVTAP}}}},
		devices: map[string]*types.NetworkInterfaceStatus{"eth0": {HostDeviceName: "flabc0m0"}}}
	if err := b2.registerMetadata(ctx); err != nil || len(md.registered) != 0 {
		t.Errorf("macvtap only: %v, %v", err, md.registered)
	}
	b.r = &Reconciler{}
	if err := b.registerMetadata(ctx); err != nil {
		t.Errorf("no metadata service: %v", err)
	}
}

// The after hook sees exactly the steps that acted, in order.
func TestRunPlanAfter(t *testing.T) {
	var acted []string
	no := func(context.Context) (bool, error) { return false, nil }
	flag := false
	steps := []step{
		{name: "skipped", needed: no, do: func(context.Context) error { return nil }},
		{name: "always", do: func(context.Context) error { return nil }},
		{name: "needed", needed: func(context.Context) (bool, error) { return !flag, nil }, do: func(context.Context) error { flag = true; return nil }},
		{name: "fails", do: func(context.Context) error { return errors.New("boom") }},
		{name: "never", do: func(context.Context) error { return nil }},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := runPlan(ctx, steps, func(s string) { acted = append(acted, s) })
	if err == nil || !slices.Equal(acted, []string{"always", "needed"}) {
		t.Fatalf("acted %q, err %v", acted, err)
	}
}
