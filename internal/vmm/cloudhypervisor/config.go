package cloudhypervisor

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// The documents of Cloud Hypervisor's REST API, as its OpenAPI description
// (vmm/src/api/openapi/cloud-hypervisor.yaml) defines them. Only the
// fields the provider sets are declared.

// VMConfig is the body of PUT /api/v1/vm.create.
type VMConfig struct {
	CPUs    CPUsConfig    `json:"cpus"`
	Memory  MemoryConfig  `json:"memory"`
	Payload PayloadConfig `json:"payload"`
	Disks   []DiskConfig  `json:"disks,omitempty"`
	Net     []NetConfig   `json:"net,omitempty"`
	FS      []FSConfig    `json:"fs,omitempty"`
	Serial  ConsoleConfig `json:"serial"`
	Console ConsoleConfig `json:"console"`
	Vsock   *VsockConfig  `json:"vsock,omitempty"`
}

// CPUsConfig is VmConfig.cpus.
type CPUsConfig struct {
	BootVCPUs int `json:"boot_vcpus"`
	MaxVCPUs  int `json:"max_vcpus"`
}

// MemoryConfig is VmConfig.memory; Size is in bytes. Shared memory is
// needed by vhost-user devices (virtio-fs).
type MemoryConfig struct {
	Size   int64 `json:"size"`
	Shared bool  `json:"shared,omitempty"`
}

// PayloadConfig is VmConfig.payload.
type PayloadConfig struct {
	Kernel    string `json:"kernel"`
	Cmdline   string `json:"cmdline,omitempty"`
	Initramfs string `json:"initramfs,omitempty"`
}

// DiskConfig is an entry of VmConfig.disks (and PUT vm.add-disk).
type DiskConfig struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly"`
	ID       string `json:"id"`
	// Serial is the virtio-blk serial: /dev/disk/by-id/virtio-<serial>.
	Serial string `json:"serial,omitempty"`
}

// NetConfig is an entry of VmConfig.net and the body of PUT vm.add-net. A
// macvtap's descriptor travels with vm.add-net (SCM_RIGHTS), never in the
// body.
type NetConfig struct {
	Tap string `json:"tap,omitempty"`
	MAC string `json:"mac,omitempty"`
	ID  string `json:"id"`
}

// FSConfig is an entry of VmConfig.fs: a virtio-fs device served by a
// virtiofsd on Socket.
type FSConfig struct {
	Tag       string `json:"tag"`
	Socket    string `json:"socket"`
	NumQueues int    `json:"num_queues"`
	QueueSize int    `json:"queue_size"`
	ID        string `json:"id"`
}

// ConsoleConfig is VmConfig.serial and VmConfig.console.
type ConsoleConfig struct {
	Mode string `json:"mode"`
	File string `json:"file,omitempty"`
}

// VsockConfig is VmConfig.vsock.
type VsockConfig struct {
	CID    int    `json:"cid"`
	Socket string `json:"socket"`
}

// VMInfo is the answer of GET /api/v1/vm.info.
type VMInfo struct {
	State  string   `json:"state"`
	Config VMConfig `json:"config"`
}

// VM states (VMInfo.State).
const (
	stateCreated    = "Created"
	stateRunning    = "Running"
	stateShutdown   = "Shutdown"
	statePaused     = "Paused"
	stateBreakPoint = "BreakPoint"
)

// plan is what Start sends: the vm.create document and the network
// devices added after it (with vm.add-net) in guest order, and for each
// added one the index in vm.Nets.
type plan struct {
	config VMConfig
	addNet []NetConfig
	netOf  []int
}

// buildPlan turns a VM into Cloud Hypervisor's configuration. fsSockets
// are the virtiofsd sockets for vm.SharedDirs and vsock the guest agent's
// socket, as Cloud Hypervisor is given them. With byFD every network
// device is passed as a descriptor (an unprivileged VMM opens none).
func buildPlan(vm vmm.VM, fsSockets []string, vsock string, byFD bool) plan {
	cfg := VMConfig{
		CPUs:    CPUsConfig{BootVCPUs: vm.VCPU, MaxVCPUs: vm.VCPU},
		Memory:  MemoryConfig{Size: int64(vm.MemoryMB) << 20},
		Payload: PayloadConfig{Kernel: vm.KernelPath, Cmdline: kernelCmdline(vm.Cmdline), Initramfs: vm.InitrdPath},
		// The serial port is the VMM's stdout, which is console.log opened
		// for appending ("File" mode would truncate it at every start);
		// the virtio console is off.
		Serial:  ConsoleConfig{Mode: "Tty"},
		Console: ConsoleConfig{Mode: "Off"},
	}
	for i, d := range vm.Disks {
		cfg.Disks = append(cfg.Disks, DiskConfig{Path: d.Path, Readonly: d.ReadOnly, ID: fmt.Sprintf("disk%d", i), Serial: diskSerial(d.ID)})
	}
	// Devices are enumerated in configuration order, and devices added
	// with vm.add-net go after those of vm.create: when any device is
	// passed as a descriptor (a macvtap; every device with byFD), which
	// only vm.add-net takes, all of them are added, in order.
	p := plan{}
	macvtap := byFD
	for _, n := range vm.Nets {
		macvtap = macvtap || n.MacVTap
	}
	for i, n := range vm.Nets {
		nc := NetConfig{MAC: n.GuestMAC, ID: fmt.Sprintf("net%d", i)}
		if !n.MacVTap && !byFD {
			nc.Tap = n.HostDevice
		}
		if macvtap {
			p.addNet = append(p.addNet, nc)
			p.netOf = append(p.netOf, i)
		} else {
			cfg.Net = append(cfg.Net, nc)
		}
	}
	for i, sd := range vm.SharedDirs {
		cfg.FS = append(cfg.FS, FSConfig{Tag: sd.Tag, Socket: fsSockets[i], NumQueues: 1, QueueSize: 1024, ID: fmt.Sprintf("fs%d", i)})
	}
	if len(cfg.FS) > 0 {
		cfg.Memory.Shared = true
	}
	if vm.GuestAgent {
		cfg.Vsock = &VsockConfig{CID: vmm.GuestAgentCID, Socket: vsock}
	}
	p.config = cfg
	return p
}

var serialUnsafe = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// diskSerial makes a virtio-blk serial (at most 20 bytes) from a disk ID,
// as the QEMU provider does.
func diskSerial(id string) string {
	s := serialUnsafe.ReplaceAllString(id, "_")
	if len(s) > 20 {
		s = s[:20]
	}
	return s
}

// kernelCmdline adds console=ttyS0 (the serial port goes to console.log,
// where exit reasons are read from) unless the command line already names
// a console on ttyS0; it goes before a "--".
func kernelCmdline(base string) string {
	head, tail := base, ""
	if i := strings.Index(" "+base+" ", " -- "); i >= 0 {
		head, tail = base[:i], base[i:]
	}
	for f := range strings.FieldsSeq(head) {
		if v, ok := strings.CutPrefix(f, "console="); ok && strings.HasPrefix(v, "ttyS0") {
			return strings.TrimSpace(base)
		}
	}
	out := strings.TrimSpace(strings.TrimSpace(head) + " console=ttyS0")
	if tail = strings.TrimSpace(tail); tail != "" {
		out += " " + tail
	}
	return out
}
