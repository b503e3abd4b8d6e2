package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// optionValues returns the values that follow each occurrence of flag.
func optionValues(argv []string, flag string) []string {
	var vs []string
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			vs = append(vs, argv[i+1])
		}
	}
	return vs
}

func TestBuildArgs(t *testing.T) {
	base := vmm.VM{
		UID: "01HZY", Dir: "/state/vm/ns/name/01HZY", VCPU: 2, MemoryMB: 512,
		KernelPath: "/state/k", Cmdline: "root=/dev/vda",
	}
	for _, tc := range []struct {
		name  string
		edit  func(*launch)
		check func(t *testing.T, argv []string)
	}{{
		name: "minimal tcg",
		check: func(t *testing.T, argv []string) {
			want := map[string][]string{
				"-name":    {"guest=01HZY,debug-threads=on"},
				"-M":       {"microvm,accel=tcg,rtc=on"},
				"-cpu":     {"max"},
				"-m":       {"512"},
				"-smp":     {"2"},
				"-kernel":  {"/state/k"},
				"-pidfile": {"/state/vm/ns/name/01HZY/vmm.pid"},
				"-chardev": {"socket,id=qmp,fd=3,server=on,wait=off", "file,id=console,path=/state/vm/ns/name/01HZY/console.log,append=on"},
				"-mon":     {"chardev=qmp,mode=control"},
				"-serial":  {"chardev:console"},
				"-append":  {"root=/dev/vda console=ttyS0 reboot=t panic=-1 tsc_early_khz=2600000 tsc=reliable"},
				"-initrd":  nil,
				"-drive":   nil,
				"-netdev":  nil,
			}
			for flag, vs := range want {
				if got := optionValues(argv, flag); !slices.Equal(got, vs) {
					t.Errorf("%s = %q, want %q", flag, got, vs)
				}
			}
			for _, f := range []string{"-nodefaults", "-no-user-config", "-nographic", "-no-reboot"} {
				if !slices.Contains(argv, f) {
					t.Errorf("missing %s", f)
				}
			}
			if slices.Contains(argv, "-S") {
				t.Error("-S without StartPaused")
			}
			if argv[0] != "/usr/bin/qemu-system-x86_64" {
				t.Errorf("argv[0] = %q", argv[0])
			}
		},
	}, {
		name: "kvm paused with initrd",
		edit: func(l *launch) {
			l.accel = "kvm"
			l.vm.StartPaused = true
			l.vm.InitrdPath = "/state/initrd"
		},
		check: func(t *testing.T, argv []string) {
			if got := optionValues(argv, "-M"); !slices.Equal(got, []string{"microvm,accel=kvm,rtc=on"}) {
				t.Errorf("-M = %q", got)
			}
			if got := optionValues(argv, "-cpu"); !slices.Equal(got, []string{"host"}) {
				t.Errorf("-cpu = %q", got)
			}
			if !slices.Contains(argv, "-S") {
				t.Error("no -S for StartPaused")
			}
			if got := optionValues(argv, "-initrd"); !slices.Equal(got, []string{"/state/initrd"}) {
				t.Errorf("-initrd = %q", got)
			}
			if got := optionValues(argv, "-append")[0]; strings.Contains(got, "tsc") {
				t.Errorf("kvm cmdline has TCG extras: %q", got)
			}
		},
	}, {
		name: "disks in order",
		edit: func(l *launch) {
			l.vm.Disks = []vmm.Disk{
				{ID: "root", Path: "/state/root.img"},
				{ID: "data vol/1", Path: "/state/a,b.qcow2", Format: "qcow2", ReadOnly: true},
				{ID: "cidata-with-a-very-long-id", Path: "/state/cidata.img"},
			}
		},
		check: func(t *testing.T, argv []string) {
			wantDrives := []string{
				"id=disk0,file=/state/root.img,format=raw,if=none",
				"id=disk1,file=/state/a,,b.qcow2,format=qcow2,if=none,readonly=on",
				"id=disk2,file=/state/cidata.img,format=raw,if=none",
			}
			wantDevs := []string{
				"virtio-blk-device,drive=disk0,serial=root",
				"virtio-blk-device,drive=disk1,serial=data_vol_1",
				"virtio-blk-device,drive=disk2,serial=cidata-with-a-very-l",
			}
			if got := optionValues(argv, "-drive"); !slices.Equal(got, wantDrives) {
				t.Errorf("-drive = %q\nwant %q", got, wantDrives)
			}
			if got := optionValues(argv, "-device"); !slices.Equal(got, wantDevs) {
				t.Errorf("-device = %q\nwant %q", got, wantDevs)
			}
		},
	}, {
		name: "tap and macvtap",
		edit: func(l *launch) {
			l.vm.Nets = []vmm.NetDevice{
				{HostDevice: "tap0", GuestMAC: "02:00:00:00:00:01"},
				{HostDevice: "mvtap1", HostIndex: 17, MacVTap: true, GuestMAC: "02:00:00:00:00:02"},
				{HostDevice: "tap2"},
			}
			l.tapFDs = map[int]int{1: 4}
		},
		check: func(t *testing.T, argv []string) {
			wantNetdevs := []string{
				"tap,id=net0,ifname=tap0,script=no,downscript=no",
				"tap,id=net1,fd=4",
				"tap,id=net2,ifname=tap2,script=no,downscript=no",
			}
			wantDevs := []string{
				"virtio-net-device,netdev=net0,mac=02:00:00:00:00:01",
				"virtio-net-device,netdev=net1,mac=02:00:00:00:00:02",
				"virtio-net-device,netdev=net2",
			}
			if got := optionValues(argv, "-netdev"); !slices.Equal(got, wantNetdevs) {
				t.Errorf("-netdev = %q\nwant %q", got, wantNetdevs)
			}
			if got := optionValues(argv, "-device"); !slices.Equal(got, wantDevs) {
				t.Errorf("-device = %q\nwant %q", got, wantDevs)
			}
		},
	}, {
		name: "extra args last",
		edit: func(l *launch) { l.extra = []string{"-d", "guest_errors"} },
		check: func(t *testing.T, argv []string) {
			if got := argv[len(argv)-2:]; !slices.Equal(got, []string{"-d", "guest_errors"}) {
				t.Errorf("tail = %q", got)
			}
		},
	}, {
		name: "comma in folder",
		edit: func(l *launch) { l.vm.Dir = "/state/a,b" },
		check: func(t *testing.T, argv []string) {
			if got := optionValues(argv, "-chardev")[1]; got != "file,id=console,path=/state/a,,b/console.log,append=on" {
				t.Errorf("console chardev = %q", got)
			}
			if got := optionValues(argv, "-pidfile"); got[0] != "/state/a,b/vmm.pid" {
				t.Errorf("-pidfile = %q", got) // a plain argument: not escaped
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			l := launch{binary: "/usr/bin/qemu-system-x86_64", vm: base, accel: "tcg", tscKHz: 2600000, qmpFD: 3}
			if tc.edit != nil {
				tc.edit(&l)
			}
			argv := buildArgs(l)
			tc.check(t, argv)
			if uid := argvUID(argv, l.binary); uid != l.vm.UID {
				t.Errorf("argvUID = %q, want %q", uid, l.vm.UID)
			}
		})
	}
}

func TestKernelCmdline(t *testing.T) {
	for _, tc := range []struct{ base, accel, want string }{
		{"", "tcg", "console=ttyS0 reboot=t panic=-1 tsc_early_khz=1000 tsc=reliable"},
		{"", "kvm", "console=ttyS0 reboot=t panic=-1"},
		{"root=/dev/vda ro", "kvm", "root=/dev/vda ro console=ttyS0 reboot=t panic=-1"},
		// The user's settings win.
		{"console=hvc0 panic=5 tsc=unstable", "tcg", "console=hvc0 panic=5 tsc=unstable console=ttyS0 reboot=t tsc_early_khz=1000"},
		{"console=ttyS0,115200n8 reboot=k", "kvm", "console=ttyS0,115200n8 reboot=k panic=-1"},
		// Extras go before the arguments for init.
		{"root=/dev/vda -- single x=1", "kvm", "root=/dev/vda console=ttyS0 reboot=t panic=-1 -- single x=1"},
		{"-- panic=3", "kvm", "console=ttyS0 reboot=t panic=-1 -- panic=3"},
		{"a--b", "kvm", "a--b console=ttyS0 reboot=t panic=-1"},
	} {
		if got := kernelCmdline(tc.base, tc.accel, 1000); got != tc.want {
			t.Errorf("kernelCmdline(%q, %s)\n got %q\nwant %q", tc.base, tc.accel, got, tc.want)
		}
	}
}

func TestArgvUID(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"/usr/bin/qemu-system-x86_64", "-name", "guest=U1,debug-threads=on"}, "U1"},
		{[]string{"qemu-system-x86_64", "-m", "1", "-name", "guest=U2"}, "U2"},
		{[]string{"/opt/vmm-wrapper", "-name", "guest=U3"}, "U3"}, // the configured binary
		{[]string{"/bin/sleep", "-name", "guest=U1"}, ""},
		{[]string{"qemu-system-x86_64", "-name", "U1"}, ""},
		{[]string{"qemu-system-x86_64", "-name"}, ""},
		{nil, ""},
	} {
		if got := argvUID(tc.argv, "/opt/vmm-wrapper"); got != tc.want {
			t.Errorf("argvUID(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}
