// Package vmm is the seam between flintlockd and the virtual machine
// monitors it runs: a Provider turns a fully resolved VM description (host
// files, devices) into a running VMM process and reports on it.
package vmm

import (
	"context"
	"time"
)

// Disk is a block device given to the guest, in attachment order.
type Disk struct {
	ID       string
	Path     string // host file
	ReadOnly bool
	Format   string // "raw" (default) or "qcow2"
}

// NetDevice is a guest network device backed by a host device.
type NetDevice struct {
	// HostDevice is the host TAP device name (for macvtap: the macvtap link
	// name; the provider opens /dev/tapN by its index).
	HostDevice string
	// HostIndex is the host link index (needed for macvtap).
	HostIndex int
	GuestMAC  string
	MacVTap   bool
}

// VM is everything a provider needs to start one microVM. All paths are on
// the host and already exist.
type VM struct {
	UID       string
	Namespace string
	Name      string
	// Dir is the VM's own folder; the provider keeps its files there
	// (pid file, command line, console log, control sockets).
	Dir        string
	VCPU       int
	MemoryMB   int
	KernelPath string
	InitrdPath string // optional
	// Cmdline is the complete kernel command line.
	Cmdline string
	// Disks are attached in order; the root volume, when there is one, is
	// first. The cloud-init cidata disk is the last one.
	Disks []Disk
	Nets  []NetDevice
	// StartPaused starts the VMM with the guest CPUs stopped; Resume runs it.
	StartPaused bool
	// Metadata are the cloud-init documents (meta-data, user-data,
	// vendor-data, network-config, ...) by file name. Providers with a
	// metadata service (Firecracker's MMDS) serve them to the guest too;
	// the cidata disk carries them for every provider.
	Metadata map[string][]byte
	// GuestAgent gives the guest a vsock device (CID GuestAgentCID) for a
	// guest agent (MicroVMSpec.allow_guest_agent). Its host end is the
	// unix socket GuestAgentSocket in Dir, where a host process connects
	// and writes "CONNECT <port>\n" to reach a guest port.
	GuestAgent bool
	// SharedDirs are host folders given to the guest over virtio-fs
	// (volumes with a virtiofs_source); the guest mounts them by tag.
	SharedDirs []SharedDir
}

// SharedDir is a host folder shared with the guest over virtio-fs.
type SharedDir struct {
	// Tag is the mount tag the guest uses (mount -t virtiofs <tag> <dir>).
	Tag      string
	HostPath string
	ReadOnly bool
}

// The guest agent's vsock device.
const (
	// GuestAgentCID is the guest's vsock context id.
	GuestAgentCID = 3
	// GuestAgentSocket is the host end of the vsock device, in the VM folder.
	GuestAgentSocket = "vsock.sock"
)

// State is what a provider observes of a VM's VMM process.
type State string

const (
	// StateRunning: the VMM process runs and the guest is running.
	StateRunning State = "running"
	// StatePaused: the VMM process runs with the guest stopped.
	StatePaused State = "paused"
	// StateExited: a VMM process was started for this VM and has gone.
	StateExited State = "exited"
	// StateNotStarted: no VMM process has been started for this VM.
	StateNotStarted State = "not-started"
	// StateFailed: the VMM process runs but reports its guest dead (a
	// guest panic, an internal error); Status.Reason says which.
	StateFailed State = "failed"
)

// Status is a snapshot of a VM's VMM process.
type Status struct {
	State State
	Pid   int
	// Reason says why the VMM exited, when known (e.g. the last console
	// lines or the exit status).
	Reason string
}

// Capabilities tells the reconciler what a provider supports.
type Capabilities struct {
	// Metadata via a NoCloud cidata disk.
	NoCloudDisk bool
	// VirtioFS host folders.
	VirtioFS bool
	// MacVTap devices.
	MacVTap bool
	// GuestAgent: a vsock device for a guest agent (VM.GuestAgent).
	GuestAgent bool
	// UncompressedKernel: the VMM boots only an uncompressed ELF vmlinux
	// (not a bzImage); the reconciler then prefers boot/vmlinux in a
	// kernel image that names no file.
	UncompressedKernel bool
	// Qcow2 disks (Disk.Format "qcow2"); providers without it get raw
	// files only.
	Qcow2 bool
}

// Provider runs microVMs with one VMM.
type Provider interface {
	// Name is the provider's name in MicroVMSpec.provider.
	Name() string
	Capabilities() Capabilities
	// Start launches the VMM as a process detached from flintlockd, so it
	// survives a restart of the daemon. Start is idempotent: when a VMM
	// process for vm.UID already runs it returns its status and starts
	// nothing.
	Start(ctx context.Context, vm VM) (Status, error)
	// Resume runs a VM started with StartPaused.
	Resume(ctx context.Context, vm VM) error
	// Status reports the VMM process of the VM whose folder is dir.
	Status(ctx context.Context, uid, dir string) (Status, error)
	// Stop ends the VMM process: gracefully within timeout, then forcibly.
	// Stopping a VM that does not run is not an error.
	Stop(ctx context.Context, uid, dir string, timeout time.Duration) error
	// Wait returns a channel closed when the running VMM process of the VM
	// exits (it works for processes started by an earlier flintlockd too).
	// When no process runs, the channel is already closed. ctx bounds only
	// the setting up of the watch.
	Wait(ctx context.Context, uid, dir string) (<-chan struct{}, error)
}
