package qemu

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// launch is everything one QEMU command line is made of.
type launch struct {
	binary string
	vm     vmm.VM
	accel  string // "kvm" or "tcg"
	tscKHz int    // guest TSC frequency under TCG
	// qmpFD is the child's descriptor of the listening QMP socket.
	qmpFD int
	// tapFDs maps an index in vm.Nets to the child's descriptor of its
	// host device, opened by the provider (/dev/net/tun attached to the
	// TAP, or the macvtap's /dev/tapN).
	tapFDs map[int]int
	// fsSockets are the virtiofsd sockets of vm.SharedDirs, in order, as
	// QEMU (running in vm.Dir) is given them.
	fsSockets []string
	extra     []string
}

// buildArgs returns the QEMU argument vector, argv[0] included.
//
// The QMP socket is created by the provider and inherited (fd=): it listens
// before QEMU runs, so the provider connects at once and its read of the
// greeting doubles as the readiness signal, with no polling for the socket
// to appear.
func buildArgs(l launch) []string {
	vm := l.vm
	machine := "microvm,accel=" + l.accel + ",rtc=on"
	if len(vm.SharedDirs) > 0 {
		machine += ",memory-backend=" + sharedMemID // see sharedMemArgs
	}
	cpu := "max"
	if l.accel == "kvm" {
		cpu = "host"
	}
	args := []string{
		l.binary,
		// The marker the provider finds its processes by (see argvUID).
		"-name", "guest=" + vm.UID + ",debug-threads=on",
		"-M", machine,
		"-cpu", cpu,
		"-m", strconv.Itoa(vm.MemoryMB),
		"-smp", strconv.Itoa(vm.VCPU),
	}
	args = append(args, sharedMemArgs(vm)...)
	args = append(args,
		"-nodefaults", "-no-user-config", "-nographic",
		// Any guest reboot (reboot=t, panic=-1) ends the process.
		"-no-reboot",
	)
	if vm.StartPaused {
		args = append(args, "-S")
	}
	args = append(args,
		"-pidfile", filepath.Join(vm.Dir, process.PidFile),
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d,server=on,wait=off", l.qmpFD),
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "file,id=console,path="+optEscape(filepath.Join(vm.Dir, process.ConsoleFile))+",append=on",
		"-serial", "chardev:console",
		"-kernel", vm.KernelPath,
	)
	if vm.InitrdPath != "" {
		args = append(args, "-initrd", vm.InitrdPath)
	}
	args = append(args, "-append", kernelCmdline(vm.Cmdline, l.accel, l.tscKHz))
	// virtio-mmio devices are enumerated by the guest in the order they are
	// given here, so the first disk is /dev/vda (checked by a boot test).
	for i, d := range vm.Disks {
		id := fmt.Sprintf("disk%d", i)
		format := d.Format
		if format == "" {
			format = "raw"
		}
		drive := fmt.Sprintf("id=%s,file=%s,format=%s,if=none", id, optEscape(d.Path), format)
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		dev := "virtio-blk-device,drive=" + id
		if s := diskSerial(d.ID); s != "" {
			dev += ",serial=" + s // /dev/disk/by-id/virtio-<serial> in the guest
		}
		args = append(args, "-drive", drive, "-device", dev)
	}
	for i, n := range vm.Nets {
		id := fmt.Sprintf("net%d", i)
		netdev := fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", id, optEscape(n.HostDevice))
		if fd, ok := l.tapFDs[i]; ok { // opened by the provider (privilege.go)
			netdev = fmt.Sprintf("tap,id=%s,fd=%d", id, fd)
		}
		dev := "virtio-net-device,netdev=" + id
		if n.GuestMAC != "" {
			dev += ",mac=" + optEscape(n.GuestMAC)
		}
		args = append(args, "-netdev", netdev, "-device", dev)
	}
	args = append(args, sharedDirArgs(vm, l.fsSockets)...)
	return append(args, l.extra...)
}

// optEscape escapes a value inside a QEMU option string ("a,b" -> "a,,b").
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

var serialUnsafe = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// diskSerial makes a virtio-blk serial (at most 20 bytes) from a disk ID.
func diskSerial(id string) string {
	s := serialUnsafe.ReplaceAllString(id, "_")
	if len(s) > 20 {
		s = s[:20]
	}
	return s
}

// kernelCmdline appends to the VM's kernel command line what the microvm
// machine needs, unless the command line already sets that parameter:
//   - always console=ttyS0 (the serial port goes to console.log, which
//     exit reasons are read from; added last, so it is /dev/console, unless
//     ttyS0 is already a console), reboot=t and panic=-1 (a reboot request
//     or a panic ends QEMU, see -no-reboot);
//   - under TCG, tsc_early_khz=<host TSC kHz> and tsc=reliable: the microvm
//     machine offers TCG no timer to calibrate the TSC against, and without
//     them about half the boots hang after "tsc: Marking TSC unstable". TCG
//     guests read the host's TSC, hence its frequency.
//
// Extras go before a "--" (after it, arguments belong to init).
func kernelCmdline(base, accel string, tscKHz int) string {
	extras := [][2]string{{"console", "ttyS0"}, {"reboot", "t"}, {"panic", "-1"}}
	if accel == "tcg" {
		extras = append(extras, [2]string{"tsc_early_khz", strconv.Itoa(tscKHz)}, [2]string{"tsc", "reliable"})
	}
	head, tail := base, ""
	// " -- " found at i in the padded string means "--" starts at i in base.
	if i := strings.Index(" "+base+" ", " -- "); i >= 0 {
		head, tail = base[:i], base[i:]
	}
	have := map[string]bool{}
	for f := range strings.FieldsSeq(head) {
		k, v, _ := strings.Cut(f, "=")
		if k == "console" && !strings.HasPrefix(v, "ttyS0") {
			continue // other consoles are kept, and ttyS0 added
		}
		have[k] = true
	}
	out := strings.TrimSpace(head)
	for _, kv := range extras {
		if !have[kv[0]] {
			out = strings.TrimSpace(out + " " + kv[0] + "=" + kv[1])
		}
	}
	if tail = strings.TrimSpace(tail); tail != "" {
		out = strings.TrimSpace(out + " " + tail)
	}
	return out
}

// argvUID returns the VM uid carried by a QEMU argument vector started by
// this provider ("-name guest=<uid>,..."), or "".
func argvUID(argv []string, binary string) string {
	if len(argv) == 0 {
		return ""
	}
	exe := filepath.Base(argv[0])
	if !strings.Contains(exe, "qemu") && exe != filepath.Base(binary) {
		return ""
	}
	for i := 1; i+1 < len(argv); i++ {
		if argv[i] != "-name" {
			continue
		}
		first, _, _ := strings.Cut(argv[i+1], ",")
		if uid, ok := strings.CutPrefix(first, "guest="); ok {
			return uid
		}
	}
	return ""
}
