package cloudhypervisor

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

func TestKernelCmdline(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "console=ttyS0"},
		{"root=/dev/vda rw", "root=/dev/vda rw console=ttyS0"},
		{"console=ttyS0,115200 rw", "console=ttyS0,115200 rw"},
		{"console=hvc0", "console=hvc0 console=ttyS0"}, // ttyS0 last: /dev/console
		{"rw -- single", "rw console=ttyS0 -- single"},
	} {
		if got := kernelCmdline(tc.in); got != tc.want {
			t.Errorf("kernelCmdline(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// The vm.create and vm.add-net documents, field by field, against the
// published API (vmm/src/api/openapi/cloud-hypervisor.yaml): the expected
// bodies are written by hand from its schemas.
func TestPlan(t *testing.T) {
	base := vmm.VM{
		UID: "U1", Dir: "/vm", VCPU: 2, MemoryMB: 512,
		KernelPath: "/vm/kernel", InitrdPath: "/vm/initrd", Cmdline: "root=/dev/vda rw",
		Disks: []vmm.Disk{
			{ID: "root", Path: "/vm/root.img"},
			{ID: "a volume with a very long name", Path: "/vm/data.img", ReadOnly: true, Format: "qcow2"},
			{ID: "cidata", Path: "/vm/cidata.img", ReadOnly: true},
		},
		Nets: []vmm.NetDevice{{HostDevice: "fltap0", GuestMAC: "02:00:00:00:00:01"}, {HostDevice: "fltap1"}},
	}
	const common = `
		"cpus": {"boot_vcpus": 2, "max_vcpus": 2},
		"payload": {"kernel": "/vm/kernel", "cmdline": "root=/dev/vda rw console=ttyS0", "initramfs": "/vm/initrd"},
		"disks": [
			{"path": "/vm/root.img", "readonly": false, "id": "disk0", "serial": "root"},
			{"path": "/vm/data.img", "readonly": true, "id": "disk1", "serial": "a_volume_with_a_very"},
			{"path": "/vm/cidata.img", "readonly": true, "id": "disk2", "serial": "cidata"}],
		"serial": {"mode": "Tty"},
		"console": {"mode": "Off"}`

	// TAP devices only: all in vm.create.
	p := buildPlan(base, nil, "", false)
	checkDoc(t, "taps", p.config, `{`+common+`,
		"memory": {"size": 536870912},
		"net": [
			{"tap": "fltap0", "mac": "02:00:00:00:00:01", "id": "net0"},
			{"tap": "fltap1", "id": "net1"}]}`)
	if len(p.addNet) != 0 {
		t.Errorf("taps only: %d devices added with vm.add-net", len(p.addNet))
	}

	// A macvtap among them: every network device goes through vm.add-net,
	// in order; shared folders (with shared memory) and the vsock device.
	full := base
	full.Nets = []vmm.NetDevice{
		{HostDevice: "flmvtap0", HostIndex: 7, MacVTap: true, GuestMAC: "02:00:00:00:00:07"},
		{HostDevice: "fltap1", GuestMAC: "02:00:00:00:00:02"},
	}
	full.SharedDirs = []vmm.SharedDir{{Tag: "data", HostPath: "/srv/data"}, {Tag: "logs", HostPath: "/srv/logs"}}
	full.GuestAgent = true
	p = buildPlan(full, []string{"/vm/virtiofs-U1-0.sock", "virtiofs-U1-1.sock"}, "/vm/run/vsock.sock", false)
	checkDoc(t, "full", p.config, `{`+common+`,
		"memory": {"size": 536870912, "shared": true},
		"fs": [
			{"tag": "data", "socket": "/vm/virtiofs-U1-0.sock", "num_queues": 1, "queue_size": 1024, "id": "fs0"},
			{"tag": "logs", "socket": "virtiofs-U1-1.sock", "num_queues": 1, "queue_size": 1024, "id": "fs1"}],
		"vsock": {"cid": 3, "socket": "/vm/run/vsock.sock"}}`)
	if len(p.addNet) != 2 || p.netOf[0] != 0 || p.netOf[1] != 1 {
		t.Fatalf("add-net plan %+v %v", p.addNet, p.netOf)
	}
	checkDoc(t, "add-net 0", p.addNet[0], `{"mac": "02:00:00:00:00:07", "id": "net0"}`)
	checkDoc(t, "add-net 1", p.addNet[1], `{"tap": "fltap1", "mac": "02:00:00:00:00:02", "id": "net1"}`)

	// An unprivileged VMM: every device is passed as a descriptor with
	// vm.add-net, none by name.
	p = buildPlan(base, nil, "", true)
	checkDoc(t, "by fd", p.config, `{`+common+`, "memory": {"size": 536870912}}`)
	if len(p.addNet) != 2 || p.netOf[0] != 0 || p.netOf[1] != 1 {
		t.Fatalf("add-net plan by fd %+v %v", p.addNet, p.netOf)
	}
	checkDoc(t, "by fd 0", p.addNet[0], `{"mac": "02:00:00:00:00:01", "id": "net0"}`)
	checkDoc(t, "by fd 1", p.addNet[1], `{"id": "net1"}`)
}

func checkDoc(t *testing.T, name string, doc any, want string) {
	t.Helper()
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := vmmtest.CanonJSON(t, b), vmmtest.CanonJSON(t, []byte(want)); got != want {
		t.Errorf("%s:\n got %s\nwant %s", name, got, want)
	}
}

func TestArgvAndUID(t *testing.T) {
	p := &Provider{binary: "/usr/bin/cloud-hypervisor", opts: Options{ExtraArgs: []string{"-v"}}}
	argv := p.buildArgs("/vm/ch-01HUID.sock")
	if want := "/usr/bin/cloud-hypervisor --api-socket path=/vm/ch-01HUID.sock -v"; strings.Join(argv, " ") != want {
		t.Errorf("argv %q, want %q", argv, want)
	}
	for _, a := range [][]string{argv, {"cloud-hypervisor", "--api-socket", "path=ch-01HUID.sock"}} {
		if uid := p.argvUID(a); uid != "01HUID" {
			t.Errorf("argvUID(%q) = %q", a, uid)
		}
	}
	for _, a := range [][]string{
		{"/usr/bin/qemu-system-x86_64", "--api-socket", "path=/vm/ch-01HUID.sock"},
		{"/usr/bin/cloud-hypervisor", "--api-socket", "fd=3"},
		{"/usr/bin/cloud-hypervisor", "--api-socket"},
	} {
		if uid := p.argvUID(a); uid != "" {
			t.Errorf("argvUID(%q) = %q, want none", a, uid)
		}
	}

	va := virtiofsdArgs("/usr/libexec/virtiofsd", "/vm/virtiofs-01HUID-0.sock", vmm.SharedDir{Tag: "t", HostPath: "/srv/a"})
	if want := "/usr/libexec/virtiofsd --socket-path=/vm/virtiofs-01HUID-0.sock -o source=/srv/a -o cache=auto"; strings.Join(va, " ") != want {
		t.Errorf("virtiofsd argv %q", va)
	}
	if ro := virtiofsdArgs("virtiofsd", "s", vmm.SharedDir{HostPath: "/x", ReadOnly: true}); ro[len(ro)-1] != "--readonly" {
		t.Errorf("read-only share argv %q", ro)
	}
	if uid := virtiofsdUID(va); uid != "01HUID" {
		t.Errorf("virtiofsdUID = %q", uid)
	}
	if uid := virtiofsdUID([]string{"/usr/libexec/virtiofsd", "--socket-path=/run/other.sock"}); uid != "" {
		t.Errorf("virtiofsdUID of a foreign daemon = %q", uid)
	}
}
