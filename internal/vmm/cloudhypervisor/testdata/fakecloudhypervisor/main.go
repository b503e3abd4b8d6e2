// Command fakecloudhypervisor is a TEST STAND-IN for the `cloud-hypervisor`
// binary, which cannot run on the test hosts (no registry ships it and it
// needs KVM). It takes the real command line flags (--api-socket
// path=...|fd=..., -v, --log-file), serves the REST API of Cloud
// Hypervisor's OpenAPI description on the socket with its answers (204 or
// 200, errors as a JSON array of messages with 400, 404 or 500), receives
// descriptors passed with a request (SCM_RIGHTS, as vm.add-net takes
// macvtap devices), opens what Cloud Hypervisor opens at vm.boot (the
// kernel, disk files, TAP devices by name, virtiofsd sockets, the vsock
// socket) and acts out a guest on the serial port (stdout in "Tty" mode):
//
//	fake.ignore_acpi  the guest ignores the ACPI power button
//
// Every request is appended to fake-cloud-hypervisor.journal (JSON lines)
// next to the API socket, for the tests to compare with the published API.
// It is built by the provider's tests and never shipped.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func die(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "Error: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	var apiSocket, logFile string
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-v", "-vv", "-vvv":
		case "-V", "--version":
			fmt.Println("cloud-hypervisor v48.0.0-fake")
			return
		case "--api-socket", "--log-file", "--seccomp":
			if i+1 >= len(args) {
				die("a value is required for '%s <%s>' but none was supplied", a, strings.TrimPrefix(a, "--"))
			}
			switch a {
			case "--api-socket":
				apiSocket = args[i+1]
			case "--log-file":
				logFile = args[i+1]
			}
			i++
		default:
			die("unexpected argument '%s' found", a)
		}
	}
	if logFile != "" {
		f, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			die("Failed to open the log file: %v", err)
		}
		os.Stderr = f
	}
	if apiSocket == "" {
		die("fake cloud-hypervisor acts out the API only: --api-socket is required")
	}
	var path string
	fd := -1
	for opt := range strings.SplitSeq(apiSocket, ",") {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "path":
			path = v
		case "fd":
			n, err := strconv.Atoi(v)
			if err != nil {
				die("Error parsing --api-socket: invalid fd %q", v)
			}
			fd = n
		default:
			die("Error parsing --api-socket: unknown option %q", k)
		}
	}
	var l net.Listener
	var err error
	switch {
	case fd >= 0:
		l, err = net.FileListener(os.NewFile(uintptr(fd), "api-socket"))
	case path != "":
		// As Cloud Hypervisor does: a lock next to the socket keeps a
		// second instance off it; a socket left by a crash is removed.
		lock, lerr := os.OpenFile(path+".lock", os.O_WRONLY|os.O_CREATE, 0o600)
		if lerr != nil {
			die("Error creating the API server socket: %v", lerr)
		}
		if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			die("The API socket %s is in use by another instance", path)
		}
		_ = os.Remove(path)
		l, err = net.Listen("unix", path)
	default:
		die("Error parsing --api-socket: path or fd is required")
	}
	if err != nil {
		die("Error creating the API server socket: %v", err)
	}
	jdir := "."
	if path != "" {
		jdir = filepath.Dir(path)
	}
	v := &vmm{}
	if v.journal, err = os.OpenFile(filepath.Join(jdir, "fake-cloud-hypervisor.journal"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
		die("%v", err)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			die("accept: %v", err)
		}
		go v.serve(c.(*net.UnixConn))
	}
}

// vmm is the fake VMM and its one VM.
type vmm struct {
	mu      sync.Mutex
	journal *os.File

	state   string // "" (no VM), Created, Running, Paused, Shutdown
	config  map[string]json.RawMessage
	cfg     vmConfig
	netFDs  map[string]*os.File // net id -> descriptor given with vm.add-net
	devices []io.Closer         // held while booted
}

// The documents the provider uses, with all the fields the OpenAPI
// description gives them: an unknown field is a mistake.
type (
	// vmConfig is what the fake keeps of a vm.create document.
	vmConfig struct {
		Payload payload
		Memory  memory
		Disks   []disk
		Net     []netCfg
		FS      []fsCfg
		Serial  console
		Console console
		Vsock   *vsock
	}
	cpus struct {
		BootVCPUs      *int            `json:"boot_vcpus"`
		MaxVCPUs       *int            `json:"max_vcpus"`
		Topology       json.RawMessage `json:"topology"`
		KvmHyperv      bool            `json:"kvm_hyperv"`
		MaxPhysBits    int             `json:"max_phys_bits"`
		Nested         *bool           `json:"nested"`
		Affinity       json.RawMessage `json:"affinity"`
		Features       json.RawMessage `json:"features"`
		CoreScheduling string          `json:"core_scheduling"`
	}
	payload struct {
		Firmware  string `json:"firmware"`
		Kernel    string `json:"kernel"`
		Cmdline   string `json:"cmdline"`
		Initramfs string `json:"initramfs"`
		Igvm      string `json:"igvm"`
		HostData  string `json:"host_data"`
	}
	memory struct {
		Size           *int64          `json:"size"`
		HotplugSize    int64           `json:"hotplug_size"`
		HotpluggedSize int64           `json:"hotplugged_size"`
		Mergeable      bool            `json:"mergeable"`
		HotplugMethod  string          `json:"hotplug_method"`
		Shared         bool            `json:"shared"`
		Hugepages      bool            `json:"hugepages"`
		HugepageSize   int64           `json:"hugepage_size"`
		Prefault       bool            `json:"prefault"`
		Reserve        bool            `json:"reserve"`
		Thp            *bool           `json:"thp"`
		Zones          json.RawMessage `json:"zones"`
	}
	disk struct {
		Path              string          `json:"path"`
		Readonly          bool            `json:"readonly"`
		Direct            bool            `json:"direct"`
		Iommu             bool            `json:"iommu"`
		NumQueues         int             `json:"num_queues"`
		QueueSize         int             `json:"queue_size"`
		VhostUser         bool            `json:"vhost_user"`
		VhostSocket       string          `json:"vhost_socket"`
		RateLimiterConfig json.RawMessage `json:"rate_limiter_config"`
		PciSegment        int             `json:"pci_segment"`
		PciDeviceID       int             `json:"pci_device_id"`
		ID                string          `json:"id"`
		Serial            string          `json:"serial"`
		RateLimitGroup    string          `json:"rate_limit_group"`
		QueueAffinity     json.RawMessage `json:"queue_affinity"`
		BackingFiles      bool            `json:"backing_files"`
		Sparse            *bool           `json:"sparse"`
		ImageType         string          `json:"image_type"`
		LockGranularity   string          `json:"lock_granularity"`
	}
	netCfg struct {
		Tap               string          `json:"tap"`
		IP                string          `json:"ip"`
		Mask              string          `json:"mask"`
		MAC               string          `json:"mac"`
		HostMAC           string          `json:"host_mac"`
		MTU               int             `json:"mtu"`
		Iommu             bool            `json:"iommu"`
		NumQueues         int             `json:"num_queues"`
		QueueSize         int             `json:"queue_size"`
		VhostUser         bool            `json:"vhost_user"`
		VhostSocket       string          `json:"vhost_socket"`
		VhostMode         string          `json:"vhost_mode"`
		ID                string          `json:"id"`
		PciSegment        int             `json:"pci_segment"`
		PciDeviceID       int             `json:"pci_device_id"`
		RateLimiterConfig json.RawMessage `json:"rate_limiter_config"`
		OffloadTSO        *bool           `json:"offload_tso"`
		OffloadUFO        *bool           `json:"offload_ufo"`
		OffloadCsum       *bool           `json:"offload_csum"`
	}
	fsCfg struct {
		Tag         *string `json:"tag"`
		Socket      *string `json:"socket"`
		NumQueues   *int    `json:"num_queues"`
		QueueSize   *int    `json:"queue_size"`
		PciSegment  int     `json:"pci_segment"`
		PciDeviceID int     `json:"pci_device_id"`
		ID          string  `json:"id"`
	}
	console struct {
		File        string `json:"file"`
		Socket      string `json:"socket"`
		Mode        string `json:"mode"`
		Iommu       bool   `json:"iommu"`
		ID          string `json:"id"`
		PciSegment  int    `json:"pci_segment"`
		PciDeviceID int    `json:"pci_device_id"`
	}
	vsock struct {
		CID         *int64 `json:"cid"`
		Socket      string `json:"socket"`
		Iommu       bool   `json:"iommu"`
		PciSegment  int    `json:"pci_segment"`
		PciDeviceID int    `json:"pci_device_id"`
		ID          string `json:"id"`
	}
)

// topLevel are VmConfig's fields in the OpenAPI description.
var topLevel = map[string]bool{
	"cpus": true, "memory": true, "payload": true, "rate_limit_groups": true, "disks": true, "net": true,
	"rng": true, "balloon": true, "fs": true, "generic_vhost_user": true, "pmem": true, "serial": true,
	"console": true, "debug_console": true, "devices": true, "user_devices": true, "vdpa": true,
	"vsock": true, "numa": true, "iommu": true, "watchdog": true, "rtc": true, "pvpanic": true,
	"pci_segments": true, "platform": true, "tpm": true, "landlock_enable": true, "landlock_rules": true,
}

// apiError is an error answer: the message chain, outermost first.
type apiError struct {
	status int
	chain  []string
}

func fail(status int, chain ...string) *apiError { return &apiError{status, chain} }

func strict(b []byte, out any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	return d.Decode(out)
}

func deserr(err error) *apiError { return fail(400, "Failed to deserialize JSON", err.Error()) }

// serve reads requests (with any descriptors passed along) off one
// connection and answers them, keeping the connection open as micro_http
// does.
func (v *vmm) serve(c *net.UnixConn) {
	defer c.Close()
	var data []byte
	var files []*os.File
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(16*4))
	for {
		// A whole request: headers, then Content-Length bytes.
		for {
			if req, n, ok := complete(data); ok {
				resp, exit := v.handle(req, files)
				files = nil
				data = data[n:]
				c.Write(resp)
				if exit {
					os.Exit(0)
				}
				continue
			}
			break
		}
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if n == 0 && err != nil {
			return
		}
		data = append(data, buf[:n]...)
		if oobn > 0 {
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				fds, err := unix.ParseUnixRights(&m)
				if err != nil {
					continue
				}
				for _, fd := range fds {
					files = append(files, os.NewFile(uintptr(fd), "passed"))
				}
			}
		}
	}
}

// parsed is one request off the wire.
type parsed struct {
	method, path string
	body         []byte
}

// complete returns the first whole request in data and its length.
func complete(data []byte) (parsed, int, bool) {
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		return parsed{}, 0, false
	}
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data[:end+4])))
	if err != nil {
		return parsed{method: "BAD"}, end + 4, true
	}
	n := end + 4 + int(max(r.ContentLength, 0))
	if len(data) < n {
		return parsed{}, 0, false
	}
	return parsed{method: r.Method, path: r.URL.Path, body: data[end+4 : n]}, n, true
}

func response(status int, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n", status, http.StatusText(status))
	if len(body) > 0 {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
		b.Write(body)
	} else {
		b.WriteString("Content-Length: 0\r\n\r\n")
	}
	return b.Bytes()
}

func (v *vmm) handle(r parsed, files []*os.File) (resp []byte, exit bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	body := r.body
	rec := map[string]any{"method": r.method, "path": r.path, "fds": len(files)}
	if len(body) > 0 {
		rec["body"] = json.RawMessage(body)
	}
	line, _ := json.Marshal(rec)
	v.journal.Write(append(line, '\n'))
	defer func() {
		for _, f := range files {
			f.Close() // what was not kept
		}
	}()

	endpoint, ok := strings.CutPrefix(r.path, "/api/v1/")
	var out any
	var e *apiError
	switch {
	case !ok:
		e = fail(404, "Not Found")
	case r.method == "GET" && endpoint == "vmm.ping":
		out = map[string]any{"build_version": "v48.0.0-fake", "version": "48.0.0", "pid": os.Getpid(), "features": []string{"kvm"}}
	case r.method == "GET" && endpoint == "vm.info":
		if v.state == "" {
			e = fail(404, "Error from API", "The VM info is not available", "VM is not created")
			break
		}
		out = map[string]any{"config": v.config, "state": v.state, "memory_actual_size": *v.cfg.Memory.Size}
	case r.method == "GET" && endpoint == "vm.counters":
		if v.state == "" {
			e = fail(404, "Error from API", "Error getting the VM counters", "VM is not created")
			break
		}
		counters := map[string]map[string]uint64{}
		for _, d := range v.cfg.Disks {
			counters[d.ID] = map[string]uint64{"read_bytes": 0, "write_bytes": 0, "read_ops": 0, "write_ops": 0}
		}
		for _, n := range v.cfg.Net {
			counters[n.ID] = map[string]uint64{"rx_bytes": 0, "rx_frames": 0, "tx_bytes": 0, "tx_frames": 0}
		}
		out = counters
	case r.method != "PUT":
		e = fail(400, "Bad Request")
	case endpoint == "vm.create":
		e = v.create(body)
	case endpoint == "vm.add-net":
		var n netCfg
		if err := strict(body, &n); err != nil {
			e = deserr(err)
			break
		}
		e = v.addNet(n, files)
		if e == nil {
			files = nil // kept
		}
	case endpoint == "vmm.shutdown":
		return response(200, nil), true
	case len(body) > 0:
		e = fail(400, "Bad Request") // the actions take no body
	default:
		e = v.action(endpoint)
		if e == nil && endpoint == "vm.power-button" && !strings.Contains(v.cfg.Payload.Cmdline, "fake.ignore_acpi") {
			go func() {
				time.Sleep(50 * time.Millisecond)
				serial("reboot: Power down")
				os.Exit(0) // a guest power-off ends the VMM
			}()
		}
	}
	if e != nil {
		b, _ := json.Marshal(e.chain)
		return response(e.status, b), false
	}
	if out != nil {
		b, _ := json.Marshal(out)
		return response(200, b), false
	}
	return response(204, nil), false
}

func (v *vmm) create(body []byte) *apiError {
	if v.state != "" {
		return fail(500, "Error from API", "The VM could not be created", "The VM is already created")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return deserr(err)
	}
	for k := range top {
		if !topLevel[k] {
			return deserr(fmt.Errorf("unknown field `%s`", k))
		}
	}
	var cfg vmConfig
	var c cpus
	for key, out := range map[string]any{"cpus": &c, "payload": &cfg.Payload, "memory": &cfg.Memory, "disks": &cfg.Disks,
		"net": &cfg.Net, "fs": &cfg.FS, "serial": &cfg.Serial, "console": &cfg.Console, "vsock": &cfg.Vsock} {
		if raw, ok := top[key]; ok {
			if err := strict(raw, out); err != nil {
				return deserr(fmt.Errorf("%s: %w", key, err))
			}
		}
	}
	if _, ok := top["payload"]; !ok {
		return deserr(errors.New("missing field `payload`"))
	}
	if c.BootVCPUs == nil || c.MaxVCPUs == nil || *c.BootVCPUs < 1 || *c.MaxVCPUs < *c.BootVCPUs {
		return fail(500, "Error from API", "The VM could not be created", "Invalid CPU configuration")
	}
	if cfg.Memory.Size == nil {
		return deserr(errors.New("memory: missing field `size`"))
	}
	for _, f := range cfg.FS {
		if f.Tag == nil || f.Socket == nil || f.NumQueues == nil || f.QueueSize == nil {
			return deserr(errors.New("fs: missing field"))
		}
	}
	if cfg.Vsock != nil && (cfg.Vsock.CID == nil || *cfg.Vsock.CID < 3 || cfg.Vsock.Socket == "") {
		return fail(500, "Error from API", "The VM could not be created", "Invalid vsock configuration")
	}
	v.cfg, v.config, v.state = cfg, top, "Created"
	v.netFDs = map[string]*os.File{}
	return nil
}

func (v *vmm) addNet(n netCfg, files []*os.File) *apiError {
	if v.state == "" {
		return fail(404, "Error from API", "The network device could not be added to the VM", "VM is not created")
	}
	if v.state != "Created" {
		return fail(500, "Error from API", "The network device could not be added to the VM", "hotplug is not acted out by the fake")
	}
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
			return fail(500, "Error from API", "The network device could not be added to the VM", "Error creating the TAP device from the file descriptor")
		}
	}
	if len(files) > 1 {
		return fail(500, "Error from API", "The network device could not be added to the VM", "one fd per queue pair: num_queues mismatch")
	}
	for _, e := range v.cfg.Net {
		if e.ID == n.ID {
			return fail(500, "Error from API", "The network device could not be added to the VM", "Identifier "+n.ID+" is not unique")
		}
	}
	if len(files) == 1 {
		v.netFDs[n.ID] = files[0]
	}
	v.cfg.Net = append(v.cfg.Net, n)
	raw, _ := json.Marshal(v.cfg.Net)
	v.config["net"] = raw
	return nil
}

func (v *vmm) action(endpoint string) *apiError {
	notCreated := func(what string) *apiError { return fail(404, "Error from API", what, "VM is not created") }
	transition := func(what, to string) *apiError {
		return fail(500, "Error from API", what, fmt.Sprintf("Invalid VM state transition: %s to %s", v.state, to))
	}
	switch endpoint {
	case "vm.boot":
		if v.state == "" {
			return notCreated("The VM could not boot")
		}
		if v.state != "Created" && v.state != "Shutdown" {
			return transition("The VM could not boot", "Running")
		}
		if err := v.boot(); err != nil {
			v.release()
			return fail(500, "Error from API", "The VM could not boot", "Error manipulating VM", err.Error())
		}
		v.state = "Running"
	case "vm.pause", "vm.resume":
		from, to := "Running", "Paused"
		what := "The VM could not be paused"
		if endpoint == "vm.resume" {
			from, to, what = "Paused", "Running", "The VM could not resume"
		}
		if v.state == "" {
			return notCreated(what)
		}
		if v.state != from {
			return transition(what, to)
		}
		v.state = to
	case "vm.shutdown":
		if v.state == "" {
			return notCreated("The VM could not shutdown")
		}
		if v.state != "Running" && v.state != "Paused" {
			return transition("The VM could not shutdown", "Shutdown")
		}
		v.release()
		v.state = "Shutdown"
	case "vm.delete":
		v.release()
		v.state, v.config = "", nil
	case "vm.power-button":
		if v.state == "" {
			return notCreated("Error triggering power button")
		}
		if v.state != "Running" {
			return fail(500, "Error from API", "Error triggering power button", "the VM is not booted")
		}
	case "vm.reboot", "vm.nmi", "vm.resize", "vm.snapshot", "vm.restore":
		return fail(500, "Error from API", endpoint+" is not acted out by the fake")
	default:
		return fail(404, "Not Found")
	}
	return nil
}

func (v *vmm) release() {
	for _, d := range v.devices {
		d.Close()
	}
	v.devices = nil
}

// boot opens the devices as Cloud Hypervisor does when it builds the VM.
func (v *vmm) boot() error {
	cfg := v.cfg
	k, err := os.ReadFile(cfg.Payload.Kernel)
	if err != nil || !bytes.HasPrefix(k, []byte("\x7fELF")) {
		return fmt.Errorf("Error loading kernel: %v", orInvalid(err, "Invalid ELF magic number"))
	}
	if cfg.Payload.Initramfs != "" {
		if _, err := os.Stat(cfg.Payload.Initramfs); err != nil {
			return fmt.Errorf("Cannot load the initramfs: %v", err)
		}
	}
	for _, d := range cfg.Disks {
		mode := os.O_RDWR
		if d.Readonly {
			mode = os.O_RDONLY
		}
		f, err := os.OpenFile(d.Path, mode, 0)
		if err != nil {
			return fmt.Errorf("Cannot create virtio-blk device: Failed to open disk file %q: %v", d.Path, err)
		}
		v.devices = append(v.devices, f)
	}
	for _, n := range cfg.Net {
		if f := v.netFDs[n.ID]; f != nil {
			continue // a macvtap, given with vm.add-net
		}
		if n.Tap == "" {
			return fmt.Errorf("Cannot create virtio-net device: the fake does not create TAP devices")
		}
		tap, err := openTap(n.Tap)
		if err != nil {
			return fmt.Errorf("Cannot create virtio-net device: Open tap device failed: %v", err)
		}
		v.devices = append(v.devices, tap)
	}
	if len(cfg.FS) > 0 && !cfg.Memory.Shared {
		return fmt.Errorf("Cannot create virtio-fs device: vhost-user devices need shared memory (memory.shared=on)")
	}
	for _, f := range cfg.FS {
		c, err := net.Dial("unix", *f.Socket)
		if err != nil {
			return fmt.Errorf("Cannot create virtio-fs device: Failed connecting the backend: %v", err)
		}
		v.devices = append(v.devices, c)
	}
	if cfg.Vsock != nil {
		l, err := net.Listen("unix", cfg.Vsock.Socket)
		if err != nil {
			return fmt.Errorf("Cannot create virtio-vsock device: %v", err)
		}
		v.devices = append(v.devices, l)
		go serveVsock(l)
	}
	switch cfg.Serial.Mode {
	case "Tty":
		serialOut = os.Stdout
	case "File":
		f, err := os.Create(cfg.Serial.File) // truncates, as Cloud Hypervisor does
		if err != nil {
			return fmt.Errorf("Error creating console device: %v", err)
		}
		serialOut = f
	case "Off", "Null", "":
		serialOut = nil
	default:
		return fmt.Errorf("serial mode %q is not acted out by the fake", cfg.Serial.Mode)
	}
	go func() {
		serial("Linux version 6.1.0-fake (fake cloud-hypervisor guest)")
		serial("Command line: " + cfg.Payload.Cmdline)
		time.Sleep(20 * time.Millisecond)
		serial("fake-init: running")
	}()
	return nil
}

func orInvalid(err error, msg string) string {
	if err != nil {
		return err.Error()
	}
	return msg
}

var (
	serialMu  sync.Mutex
	serialOut *os.File
)

func serial(line string) {
	serialMu.Lock()
	defer serialMu.Unlock()
	if serialOut != nil {
		fmt.Fprintf(serialOut, "[    0.%06d] %s\r\n", time.Now().Nanosecond()/1000, line)
	}
}

// openTap attaches to a TAP device by name as Cloud Hypervisor does.
func openTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var ifr [unix.IFNAMSIZ + 64]byte
	copy(ifr[:unix.IFNAMSIZ-1], name)
	*(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ])) = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr[0]))); errno != 0 {
		unix.Close(fd)
		return nil, errno
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// serveVsock answers host-initiated connections as the hybrid vsock
// device does: "CONNECT <port>\n" -> "OK <host port>\n", then echoes.
func serveVsock(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if _, ok := strings.CutPrefix(strings.TrimSpace(line), "CONNECT "); !ok {
				return
			}
			fmt.Fprintf(c, "OK 1073741824\n")
			io.Copy(c, r)
		}()
	}
}
