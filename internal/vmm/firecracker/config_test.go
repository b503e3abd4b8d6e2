package firecracker

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

func TestKernelCmdline(t *testing.T) {
	const defaults = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
	for _, tc := range []struct{ in, want string }{
		{"", defaults},
		{"root=/dev/vda rw", "root=/dev/vda rw " + defaults},
		// The VM's own values win; flags without values count too.
		{"console=ttyS0 panic=0 i8042.nomux", "console=ttyS0 panic=0 i8042.nomux reboot=k pci=off i8042.noaux i8042.nopnp i8042.dumbkbd"},
		// Defaults go before init's arguments.
		{"ro -- single panic=5", "ro " + defaults + " -- single panic=5"},
		{"-- x", defaults + " -- x"},
	} {
		if got := kernelCmdline(tc.in); got != tc.want {
			t.Errorf("kernelCmdline(%q)\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

func TestDriveIDsAndRoot(t *testing.T) {
	ids := driveIDs([]vmm.Disk{{ID: "root"}, {ID: "data-1"}, {ID: "data_1"}, {ID: ""}, {ID: "cidata"}})
	want := []string{"root", "data_1", "data_1_1", "disk3", "cidata"}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Errorf("driveIDs = %v, want %v", ids, want)
	}
	for in, want := range map[string]bool{
		"root=/dev/vda rw":            true,
		"console=ttyS0":               false,
		"root=/dev/vdb":               false,
		"ro -- root=/dev/vda":         false, // init's argument, not the kernel's
		"root=/dev/vdb root=/dev/vda": true,  // the kernel takes the last
		"root=/dev/vda root=/dev/vdb": false,
	} {
		if got := rootsOnVDA(in); got != want {
			t.Errorf("rootsOnVDA(%q) = %v", in, got)
		}
	}
}

// Every document the provider sends, field by field, against the
// published API (src/firecracker/swagger/firecracker.yaml): the expected
// bodies are written by hand from its definitions.
func TestRequests(t *testing.T) {
	hostPaths := paths{
		kernel: "/vm/kernel", initrd: "/vm/initrd",
		drives: []string{"/vm/root.img", "/vm/data.img", "/vm/cidata.img"},
		log:    "/vm/firecracker.log", metrics: "/vm/firecracker.metrics", vsock: "/vm/vsock.sock",
	}
	full := vmm.VM{
		UID: "U1", Dir: "/vm", VCPU: 2, MemoryMB: 512,
		KernelPath: "/vm/kernel", InitrdPath: "/vm/initrd",
		Cmdline: "console=ttyS0 panic=1 reboot=k root=/dev/vda rw",
		Disks: []vmm.Disk{
			{ID: "root", Path: "/vm/root.img"},
			{ID: "data", Path: "/vm/data.img", ReadOnly: true},
			{ID: "cidata", Path: "/vm/cidata.img", ReadOnly: true},
		},
		Nets: []vmm.NetDevice{
			{HostDevice: "fltap1", GuestMAC: "02:00:00:00:00:01"},
			{HostDevice: "fltap2"},
		},
		Metadata:   map[string][]byte{"meta-data": []byte("instance-id: U1\n"), "user-data": []byte("#cloud-config\n")},
		GuestAgent: true,
	}
	const fullBoot = `{"kernel_image_path":"/vm/kernel","initrd_path":"/vm/initrd",
		"boot_args":"console=ttyS0 panic=1 reboot=k root=/dev/vda rw pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"}`
	fullWant := []vmmtest.WantCall{
		{Method: "PUT", Path: "/metrics", Body: `{"metrics_path":"/vm/firecracker.metrics"}`},
		{Method: "PUT", Path: "/machine-config", Body: `{"vcpu_count":2,"mem_size_mib":512}`},
		{Method: "PUT", Path: "/boot-source", Body: fullBoot},
		{Method: "PUT", Path: "/drives/root", Body: `{"drive_id":"root","path_on_host":"/vm/root.img","is_root_device":true,"is_read_only":false}`},
		{Method: "PUT", Path: "/drives/data", Body: `{"drive_id":"data","path_on_host":"/vm/data.img","is_root_device":false,"is_read_only":true}`},
		{Method: "PUT", Path: "/drives/cidata", Body: `{"drive_id":"cidata","path_on_host":"/vm/cidata.img","is_root_device":false,"is_read_only":true}`},
		{Method: "PUT", Path: "/network-interfaces/eth0", Body: `{"iface_id":"eth0","host_dev_name":"fltap1","guest_mac":"02:00:00:00:00:01"}`},
		{Method: "PUT", Path: "/network-interfaces/eth1", Body: `{"iface_id":"eth1","host_dev_name":"fltap2"}`},
		{Method: "PUT", Path: "/mmds/config", Body: `{"version":"V2","network_interfaces":["eth0","eth1"],"ipv4_address":"169.254.169.254"}`},
		{Method: "PUT", Path: "/mmds", Body: `{"latest":{"meta-data":"instance-id: U1\n","user-data":"#cloud-config\n"}}`},
		{Method: "PUT", Path: "/vsock", Body: `{"guest_cid":3,"uds_path":"/vm/vsock.sock"}`},
		{Method: "PUT", Path: "/actions", Body: `{"action_type":"InstanceStart"}`},
	}

	// An initrd guest: no root device (its only disk is the cidata disk),
	// no network (so no metadata service), no guest agent, started paused.
	small := vmm.VM{
		UID: "U2", Dir: "/vm", VCPU: 1, MemoryMB: 128, KernelPath: "/vm/kernel", InitrdPath: "/vm/initrd",
		Disks:       []vmm.Disk{{ID: "cidata", Path: "/vm/cidata.img", ReadOnly: true}},
		Metadata:    map[string][]byte{"meta-data": []byte("x")},
		StartPaused: true,
	}
	smallPaths := hostPaths
	smallPaths.drives = []string{"/vm/cidata.img"}
	smallWant := []vmmtest.WantCall{
		{Method: "PUT", Path: "/metrics", Body: `{"metrics_path":"/vm/firecracker.metrics"}`},
		{Method: "PUT", Path: "/machine-config", Body: `{"vcpu_count":1,"mem_size_mib":128}`},
		{Method: "PUT", Path: "/boot-source", Body: `{"kernel_image_path":"/vm/kernel","initrd_path":"/vm/initrd",
			"boot_args":"console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"}`},
		{Method: "PUT", Path: "/drives/cidata", Body: `{"drive_id":"cidata","path_on_host":"/vm/cidata.img","is_root_device":false,"is_read_only":true}`},
	}

	for _, tc := range []struct {
		name string
		vm   vmm.VM
		p    paths
		want []vmmtest.WantCall
	}{{"full", full, hostPaths, fullWant}, {"small", small, smallPaths, smallWant}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := buildConfig(tc.vm, tc.p, "Info")
			var got []vmmtest.Call
			for _, r := range requests(cfg, mmdsDocument(tc.vm.Metadata), tc.vm.StartPaused) {
				b, err := json.Marshal(r.Body)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, vmmtest.Call{Method: r.Method, Path: r.Path, Body: b})
			}
			vmmtest.CheckCalls(t, got, tc.want)
		})
	}

	// The same configuration as a --config-file document (vmm.config.json).
	cfg := buildConfig(full, hostPaths, "Info")
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantDoc := `{
		"boot-source": ` + fullBoot + `,
		"drives": [
			{"drive_id":"root","path_on_host":"/vm/root.img","is_root_device":true,"is_read_only":false},
			{"drive_id":"data","path_on_host":"/vm/data.img","is_root_device":false,"is_read_only":true},
			{"drive_id":"cidata","path_on_host":"/vm/cidata.img","is_root_device":false,"is_read_only":true}],
		"machine-config": {"vcpu_count":2,"mem_size_mib":512},
		"network-interfaces": [
			{"iface_id":"eth0","host_dev_name":"fltap1","guest_mac":"02:00:00:00:00:01"},
			{"iface_id":"eth1","host_dev_name":"fltap2"}],
		"mmds-config": {"version":"V2","network_interfaces":["eth0","eth1"],"ipv4_address":"169.254.169.254"},
		"logger": {"log_path":"/vm/firecracker.log","level":"Info","show_level":true,"show_log_origin":true},
		"metrics": {"metrics_path":"/vm/firecracker.metrics"},
		"vsock": {"guest_cid":3,"uds_path":"/vm/vsock.sock"}
	}`
	if got, want := vmmtest.CanonJSON(t, b), vmmtest.CanonJSON(t, []byte(wantDoc)); got != want {
		t.Errorf("config file:\n got %s\nwant %s", got, want)
	}
}

func TestJailerArgs(t *testing.T) {
	j := newJail(Jailer{
		Binary: "/usr/bin/jailer", UID: 123, GID: 456, ChrootBase: "/srv/jailer", CgroupVersion: 2,
		ParentCgroup: "flintlock", Cgroups: []string{"cpu.weight=50", "memory.max=1G"},
		NetNS: "/var/run/netns/vm1", ResourceLimits: []string{"no-file=2048"},
	}, "/usr/bin/jailer", "/usr/bin/firecracker", "01HUID")
	got := j.args("/usr/bin/firecracker", "01HUID", []string{"--api-sock", "/run/firecracker.socket"})
	want := []string{
		"/usr/bin/jailer", "--id", "01HUID", "--exec-file", "/usr/bin/firecracker",
		"--uid", "123", "--gid", "456", "--chroot-base-dir", "/srv/jailer", "--cgroup-version", "2",
		"--parent-cgroup", "flintlock", "--cgroup", "cpu.weight=50", "--cgroup", "memory.max=1G",
		"--netns", "/var/run/netns/vm1", "--resource-limit", "no-file=2048",
		"--", "--api-sock", "/run/firecracker.socket",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("jailer argv\n got %q\nwant %q", got, want)
	}
	if j.root != "/srv/jailer/firecracker/01HUID/root" || j.cgroup != "/sys/fs/cgroup/flintlock/01HUID" {
		t.Errorf("jail root %q cgroup %q", j.root, j.cgroup)
	}
	// The provider recognises both argument vectors as the VM's.
	p := &Provider{binary: "/usr/bin/firecracker", jailer: "/usr/bin/jailer"}
	for _, argv := range [][]string{
		got,
		{"/firecracker", "--id", "01HUID", "--start-time-us", "1", "--api-sock", "/run/firecracker.socket"},
		{"/usr/bin/firecracker", "--id", "01HUID", "--api-sock", "/vm/firecracker.sock"},
	} {
		if uid := p.argvUID(argv); uid != "01HUID" {
			t.Errorf("argvUID(%q) = %q", argv, uid)
		}
	}
	for _, argv := range [][]string{
		{"/usr/bin/qemu-system-x86_64", "--id", "01HUID"},
		{"/usr/bin/jailer", "--", "--id", "01HUID"},
		{"/usr/bin/firecracker", "--id"},
	} {
		if uid := p.argvUID(argv); uid != "" {
			t.Errorf("argvUID(%q) = %q, want none", argv, uid)
		}
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	elf, bz := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "bzImage")
	vmmtest.FakeELF(t, elf)
	if err := os.WriteFile(bz, []byte("MZ\x00\x00bzImage"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := vmm.VM{UID: "U", Dir: dir, VCPU: 1, MemoryMB: 128, KernelPath: elf}
	if err := validate(good); err != nil {
		t.Fatalf("good VM: %v", err)
	}
	for name, edit := range map[string]func(*vmm.VM){
		"uid":      func(vm *vmm.VM) { vm.UID = "a_b" },
		"dir":      func(vm *vmm.VM) { vm.Dir = "rel" },
		"vcpu":     func(vm *vmm.VM) { vm.VCPU = 33 },
		"memory":   func(vm *vmm.VM) { vm.MemoryMB = 1 },
		"bzImage":  func(vm *vmm.VM) { vm.KernelPath = bz },
		"qcow2":    func(vm *vmm.VM) { vm.Disks = []vmm.Disk{{Path: "/d", Format: "qcow2"}} },
		"disk":     func(vm *vmm.VM) { vm.Disks = []vmm.Disk{{ID: "x"}} },
		"macvtap":  func(vm *vmm.VM) { vm.Nets = []vmm.NetDevice{{MacVTap: true, HostDevice: "m", HostIndex: 3}} },
		"tap name": func(vm *vmm.VM) { vm.Nets = []vmm.NetDevice{{}} },
		"virtiofs": func(vm *vmm.VM) { vm.SharedDirs = []vmm.SharedDir{{Tag: "t", HostPath: "/"}} },
	} {
		vm := good
		edit(&vm)
		if err := validate(vm); err == nil || !strings.Contains(err.Error(), "invalid argument") {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
}
