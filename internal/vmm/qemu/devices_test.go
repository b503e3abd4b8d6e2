package qemu

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/vmmtest"
)

// probeInit replaces the test root's /sbin/init: it lists the guest's
// block and network devices on the console and powers off.
const probeInit = `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
for d in /sys/block/vd*; do
	echo "LMTEST disk $(basename $d) serial=$(cat $d/serial) sectors=$(cat $d/size)"
done
for n in /sys/class/net/eth*; do
	echo "LMTEST net $(basename $n) mac=$(cat $n/address)"
done
echo "LMTEST done"
poweroff -f
`

// The guest sees the disks in the order given (the first is /dev/vda, and
// it boots from it) and the network devices in the order given, TAP and
// macvtap alike.
func TestDeviceOrder(t *testing.T) {
	a := guest(t)
	p, _ := newProvider(t, Options{})
	vm := newVM(t, p)

	// Root disk: the test guest's tree with the probing init.
	tree := filepath.Join(t.TempDir(), "root")
	vmmtest.Run(t, "cp", "-a", a.RootFSDir, tree)
	if err := os.Remove(filepath.Join(tree, "sbin", "init")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sbin", "init"), []byte(probeInit), 0o755); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(vm.Dir, "root.img")
	vmmtest.Run(t, "mkfs.ext4", "-q", "-F", "-d", tree, root, "32M")
	// Two blank data disks of distinct sizes.
	var disks []vmm.Disk
	disks = append(disks, vmm.Disk{ID: "root", Path: root})
	for i, mb := range []int64{3, 5} {
		path := filepath.Join(vm.Dir, fmt.Sprintf("data%d.img", i+1))
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, mb<<20); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, vmm.Disk{ID: fmt.Sprintf("data%d", i+1), Path: path, ReadOnly: i == 1})
	}
	vm.Disks = disks

	// A TAP and a macvtap (on one end of a veth pair), named uniquely.
	tag := fmt.Sprintf("%05x", rand.IntN(1<<20))
	tap, veth, mvtap := "lmqt"+tag, "lmqv"+tag, "lmqm"+tag
	vmmtest.HostLink(t, tap, "tuntap", "add", "dev", tap, "mode", "tap")
	vmmtest.HostLink(t, veth, "link", "add", veth, "type", "veth", "peer", "name", "lmqp"+tag)
	vmmtest.HostLink(t, mvtap, "link", "add", "link", veth, "name", mvtap, "type", "macvtap", "mode", "bridge")
	vmmtest.Run(t, "ip", "link", "set", veth, "up")
	vmmtest.Run(t, "ip", "link", "set", mvtap, "up")
	idx, err := strconv.Atoi(vmmtest.SysNet(t, mvtap, "ifindex"))
	if err != nil {
		t.Fatal(err)
	}
	vm.Nets = []vmm.NetDevice{
		{HostDevice: tap, GuestMAC: "02:11:22:33:44:01"},
		{HostDevice: mvtap, HostIndex: idx, MacVTap: true, GuestMAC: vmmtest.SysNet(t, mvtap, "address")},
	}

	ctx := vmmtest.Ctx(t, 3*time.Minute)
	if _, err := p.Start(ctx, vm); err != nil {
		t.Fatal(err)
	}
	ch, err := p.Wait(ctx, vm.UID, vm.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !vmmtest.Closed(ch, 150*time.Second) {
		t.Fatal("the guest did not power off")
	}
	b, err := os.ReadFile(filepath.Join(vm.Dir, process.ConsoleFile))
	if err != nil {
		t.Fatal(err)
	}
	console := string(b)
	if !strings.Contains(console, "LMTEST done") {
		t.Fatalf("the probing init did not run; console:\n%s", console)
	}
	lines := regexp.MustCompile(`LMTEST (?:disk|net) [^\r\n]*`).FindAllString(console, -1)
	want := []string{
		"LMTEST disk vda serial=root sectors=65536",
		"LMTEST disk vdb serial=data1 sectors=6144",
		"LMTEST disk vdc serial=data2 sectors=10240",
		"LMTEST net eth0 mac=" + vm.Nets[0].GuestMAC,
		"LMTEST net eth1 mac=" + vm.Nets[1].GuestMAC,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("guest devices:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	st, err := p.Status(ctx, vm.UID, vm.Dir)
	if err != nil || st.State != vmm.StateExited || !strings.HasPrefix(st.Reason, "reboot: Power down") {
		t.Fatalf("Status after guest power-off: %+v, %v", st, err)
	}
	// Read-only disks are read-only to QEMU.
	if !vmmtest.FileContains(filepath.Join(vm.Dir, process.CmdlineFile), "data2.img,format=raw,if=none,readonly=on") {
		t.Error("vmm.cmdline lacks the read-only drive")
	}
}
