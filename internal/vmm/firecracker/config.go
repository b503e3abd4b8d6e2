package firecracker

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// The documents of Firecracker's API, as its swagger description
// (src/firecracker/swagger/firecracker.yaml) defines them. Only the fields
// the provider sets are declared; Firecracker rejects unknown fields.

// BootSource is PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is PUT /drives/{drive_id}.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

// MachineConfig is PUT /machine-config.
type MachineConfig struct {
	VcpuCount  int `json:"vcpu_count"`
	MemSizeMib int `json:"mem_size_mib"`
}

// NetworkInterface is PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// MMDSConfig is PUT /mmds/config.
type MMDSConfig struct {
	Version           string   `json:"version"`
	NetworkInterfaces []string `json:"network_interfaces"`
	IPv4Address       string   `json:"ipv4_address"`
}

// Logger is the logger section of a --config-file document (the provider
// configures the logger on the command line, see buildArgs).
type Logger struct {
	LogPath       string `json:"log_path"`
	Level         string `json:"level"`
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
}

// Metrics is PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// Vsock is PUT /vsock.
type Vsock struct {
	GuestCID int    `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// InstanceAction is PUT /actions.
type InstanceAction struct {
	ActionType string `json:"action_type"`
}

// VMState is PATCH /vm.
type VMState struct {
	State string `json:"state"`
}

// InstanceInfo is the answer of GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// Instance states (InstanceInfo.State).
const (
	stateNotStarted = "Not started"
	stateRunning    = "Running"
	statePaused     = "Paused"
)

// Config is a VM's whole configuration in the layout of Firecracker's
// --config-file (and of GET /vm/config). The provider sends it piece by
// piece over the API and writes it to vmm.config.json for operators.
type Config struct {
	BootSource        BootSource         `json:"boot-source"`
	Drives            []Drive            `json:"drives"`
	MachineConfig     MachineConfig      `json:"machine-config"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces,omitempty"`
	MMDSConfig        *MMDSConfig        `json:"mmds-config,omitempty"`
	Logger            *Logger            `json:"logger,omitempty"`
	Metrics           *Metrics           `json:"metrics,omitempty"`
	Vsock             *Vsock             `json:"vsock,omitempty"`
}

// MMDSAddress is the guest address of the metadata service.
const MMDSAddress = "169.254.169.254"

// request is one API call.
type request struct {
	Method, Path string
	Body         any
}

// paths are the files of a VM as Firecracker sees them: host paths, or
// paths inside the jail's chroot.
type paths struct {
	kernel, initrd string
	drives         []string // per vm.Disks
	log, metrics   string
	vsock          string
}

// buildConfig turns a VM into Firecracker's configuration.
func buildConfig(vm vmm.VM, p paths, logLevel string) Config {
	cfg := Config{
		BootSource:    BootSource{KernelImagePath: p.kernel, BootArgs: kernelCmdline(vm.Cmdline), InitrdPath: p.initrd},
		MachineConfig: MachineConfig{VcpuCount: vm.VCPU, MemSizeMib: vm.MemoryMB},
		Logger:        &Logger{LogPath: p.log, Level: logLevel, ShowLevel: true, ShowLogOrigin: true},
		Metrics:       &Metrics{MetricsPath: p.metrics},
	}
	root := rootsOnVDA(cfg.BootSource.BootArgs)
	ids := driveIDs(vm.Disks)
	cfg.Drives = make([]Drive, 0, len(vm.Disks))
	for i, d := range vm.Disks {
		cfg.Drives = append(cfg.Drives, Drive{
			DriveID:    ids[i],
			PathOnHost: p.drives[i],
			// Firecracker attaches drives in the order they are put, the
			// first as /dev/vda; the root device is the one the command
			// line names.
			IsRootDevice: i == 0 && root,
			IsReadOnly:   d.ReadOnly,
		})
	}
	var ifaces []string
	for i, n := range vm.Nets {
		id := fmt.Sprintf("eth%d", i)
		ifaces = append(ifaces, id)
		cfg.NetworkInterfaces = append(cfg.NetworkInterfaces, NetworkInterface{IfaceID: id, HostDevName: n.HostDevice, GuestMAC: n.GuestMAC})
	}
	// The metadata service answers on the guest's interfaces; without one
	// there is nothing to serve it on.
	if len(vm.Metadata) > 0 && len(ifaces) > 0 {
		cfg.MMDSConfig = &MMDSConfig{Version: "V2", NetworkInterfaces: ifaces, IPv4Address: MMDSAddress}
	}
	if vm.GuestAgent {
		cfg.Vsock = &Vsock{GuestCID: vmm.GuestAgentCID, UDSPath: p.vsock}
	}
	return cfg
}

// requests is the sequence of API calls that configures a VM and, unless
// paused, boots it. The logger is configured on the command line.
func requests(cfg Config, mmds map[string]any, startPaused bool) []request {
	rs := []request{
		{"PUT", "/metrics", cfg.Metrics},
		{"PUT", "/machine-config", cfg.MachineConfig},
		{"PUT", "/boot-source", cfg.BootSource},
	}
	for _, d := range cfg.Drives {
		rs = append(rs, request{"PUT", "/drives/" + d.DriveID, d})
	}
	for _, n := range cfg.NetworkInterfaces {
		rs = append(rs, request{"PUT", "/network-interfaces/" + n.IfaceID, n})
	}
	if cfg.MMDSConfig != nil {
		rs = append(rs, request{"PUT", "/mmds/config", cfg.MMDSConfig}, request{"PUT", "/mmds", mmds})
	}
	if cfg.Vsock != nil {
		rs = append(rs, request{"PUT", "/vsock", cfg.Vsock})
	}
	if !startPaused {
		rs = append(rs, request{"PUT", "/actions", InstanceAction{ActionType: "InstanceStart"}})
	}
	return rs
}

// mmdsDocument is the MMDS data store for a VM's metadata, laid out as
// cloud-init's NoCloud network source reads a seed URL
// (http://169.254.169.254/latest/ + meta-data, user-data, vendor-data,
// network-config): each document is a string under "latest".
func mmdsDocument(md map[string][]byte) map[string]any {
	latest := make(map[string]any, len(md))
	for name, data := range md {
		latest[name] = string(data)
	}
	return map[string]any{"latest": latest}
}

// defaultMMDSLimit is Firecracker's default limit of the MMDS data store
// and of an API request body (bytes).
const defaultMMDSLimit = 51200

// mmdsSize is the size of the MMDS document as sent.
func mmdsSize(doc map[string]any) int {
	b, _ := json.Marshal(doc)
	return len(b)
}

var driveUnsafe = regexp.MustCompile(`[^A-Za-z0-9_]`)

// driveIDs makes Firecracker drive ids (letters, digits, '_') from disk
// IDs, unique within the VM.
func driveIDs(disks []vmm.Disk) []string {
	ids := make([]string, len(disks))
	seen := map[string]bool{}
	for i, d := range disks {
		id := driveUnsafe.ReplaceAllString(d.ID, "_")
		if len(id) > 60 {
			id = id[:60]
		}
		if id == "" {
			id = fmt.Sprintf("disk%d", i)
		}
		for base, n := id, 1; seen[id]; n++ {
			id = fmt.Sprintf("%s_%d", base, n)
		}
		seen[id] = true
		ids[i] = id
	}
	return ids
}

// rootsOnVDA reports whether the kernel command line mounts /dev/vda as
// the root file system (the flintlockd default when a VM has a root
// volume).
func rootsOnVDA(cmdline string) bool {
	head, _, _ := strings.Cut(" "+cmdline+" ", " -- ")
	root := ""
	for f := range strings.FieldsSeq(head) {
		if v, ok := strings.CutPrefix(f, "root="); ok {
			root = v // the kernel takes the last one
		}
	}
	return root == "/dev/vda"
}

// cmdlineDefaults are appended to a VM's kernel command line unless it
// sets the parameter: the serial console (console.log, where exit reasons
// are read from), reboot through the keyboard controller and panic=1 (a
// guest reboot or panic ends Firecracker), no PCI probing (Firecracker's
// devices are virtio-mmio) and the i8042 options Firecracker's docs give
// for a fast boot (no aux port, no mux, no PnP probe, no self-test of a
// keyboard that is always there; the keyboard stays, as Ctrl-Alt-Del
// needs it).
var cmdlineDefaults = [][2]string{
	{"console", "ttyS0"},
	{"reboot", "k"},
	{"panic", "1"},
	{"pci", "off"},
	{"i8042.noaux", ""},
	{"i8042.nomux", ""},
	{"i8042.nopnp", ""},
	{"i8042.dumbkbd", ""},
}

// kernelCmdline completes a VM's kernel command line with
// cmdlineDefaults. Extras go before a "--" (after it, arguments belong to
// init).
func kernelCmdline(base string) string {
	head, tail := base, ""
	if i := strings.Index(" "+base+" ", " -- "); i >= 0 {
		head, tail = base[:i], base[i:]
	}
	have := map[string]bool{}
	for f := range strings.FieldsSeq(head) {
		k, _, _ := strings.Cut(f, "=")
		have[k] = true
	}
	out := strings.TrimSpace(head)
	for _, kv := range cmdlineDefaults {
		if have[kv[0]] {
			continue
		}
		arg := kv[0]
		if kv[1] != "" {
			arg += "=" + kv[1]
		}
		out = strings.TrimSpace(out + " " + arg)
	}
	if tail = strings.TrimSpace(tail); tail != "" {
		out = strings.TrimSpace(out + " " + tail)
	}
	return out
}
