// Command fakefirecracker is a TEST STAND-IN for the `firecracker` binary,
// which cannot run on the test hosts (no registry ships it and it needs
// KVM). It takes the real command line flags, serves the REST API of
// Firecracker's swagger description on --api-sock with Firecracker's
// answers (204s, 400s with fault_message, pre-/post-boot rules), opens what
// Firecracker opens (drive files, TAP devices, logger and metrics files,
// the vsock socket) and acts out a guest on its stdout (the serial
// console) as the kernel command line asks:
//
//	fake.panic              the guest panics after boot (and, with panic=N,
//	                        reboots: Firecracker exits)
//	fake.ignore_ctrlaltdel  the guest ignores Ctrl-Alt-Del
//	fake.state=S            once booted, GET / reports instance state S
//	                        (a state the published API does not list)
//
// Every API request is appended to fake-firecracker.journal (JSON lines)
// next to the API socket, for the tests to compare with the published
// API. It is built by the provider's tests and never shipped.
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

// flags is the command line, as Firecracker's argument parser takes it.
type flags struct {
	apiSock, id, logPath, level, metricsPath, configFile string
	payloadLimit, mmdsLimit                              int
	showLevel, showOrigin, noAPI                         bool
}

var valued = map[string]bool{
	"--api-sock": true, "--id": true, "--log-path": true, "--level": true, "--metrics-path": true,
	"--config-file": true, "--seccomp-filter": true, "--start-time-us": true, "--start-time-cpu-us": true,
	"--parent-cpu-time-us": true, "--http-api-max-payload-size": true, "--mmds-size-limit": true,
	"--metadata": true, "--module": true,
}
var switches = map[string]bool{
	"--show-level": true, "--show-log-origin": true, "--no-api": true, "--no-seccomp": true,
	"--boot-timer": true, "--version": true,
}

func parseFlags(args []string) (flags, error) {
	f := flags{apiSock: "/run/firecracker.socket", id: "anonymous-instance", level: "Info", payloadLimit: 51200, mmdsLimit: 51200}
	seen := map[string]bool{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if seen[a] {
			return f, fmt.Errorf("Argument '%s' was provided more than once.", strings.TrimPrefix(a, "--"))
		}
		seen[a] = true
		switch {
		case switches[a]:
			switch a {
			case "--show-level":
				f.showLevel = true
			case "--show-log-origin":
				f.showOrigin = true
			case "--no-api":
				f.noAPI = true
			case "--version":
				fmt.Println("Firecracker v1.10.1 (fake)")
				os.Exit(0)
			}
		case valued[a]:
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
				return f, fmt.Errorf("Argument '%s' requires a value, but none was supplied.", strings.TrimPrefix(a, "--"))
			}
			v := args[i+1]
			i++
			switch a {
			case "--api-sock":
				f.apiSock = v
			case "--id":
				f.id = v
			case "--log-path":
				f.logPath = v
			case "--level":
				switch strings.ToLower(v) {
				case "error", "warning", "info", "debug", "trace", "off":
				default:
					return f, fmt.Errorf("Invalid value for level: %s", v)
				}
				f.level = v
			case "--metrics-path":
				f.metricsPath = v
			case "--config-file":
				f.configFile = v
			case "--http-api-max-payload-size", "--mmds-size-limit":
				n, err := strconv.Atoi(v)
				if err != nil {
					return f, fmt.Errorf("Invalid value for %s: %s", a, v)
				}
				if a == "--mmds-size-limit" {
					f.mmdsLimit = n
				} else {
					f.payloadLimit = n
				}
			}
		default:
			return f, fmt.Errorf("Found argument '%s' which wasn't expected, or isn't valid in this context.", a)
		}
	}
	return f, nil
}

// vm is the fake microVM.
type vm struct {
	mu      sync.Mutex
	f       flags
	logger  *os.File
	metrics *os.File
	journal *os.File

	state      string // "Not started", "Running", "Paused"
	boot       map[string]any
	bootArgs   string
	machine    map[string]any
	drives     map[string]*os.File
	rootDrive  string
	ifaces     map[string]*os.File // TAP descriptors
	mmdsConfig map[string]any
	mmds       any
	vsockPath  string
	vsock      net.Listener
}

func main() {
	f, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "Arguments parsing error:", err)
		os.Exit(1)
	}
	v := &vm{f: f, state: "Not started", drives: map[string]*os.File{}, ifaces: map[string]*os.File{}}
	if f.logPath != "" {
		// Firecracker opens the logger's file, it never creates it.
		if v.logger, err = os.OpenFile(f.logPath, os.O_WRONLY|os.O_APPEND, 0); err != nil {
			fmt.Fprintf(os.Stderr, "Failed to initialize logger: %v\n", err)
			os.Exit(1)
		}
	}
	if v.journal, err = os.OpenFile(filepath.Join(filepath.Dir(f.apiSock), "fake-firecracker.journal"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	v.logf("INFO", "Running Firecracker v1.10.1 (fake)")
	if f.noAPI || f.configFile != "" {
		fmt.Fprintln(os.Stderr, "fake firecracker: --no-api and --config-file are not acted out")
		os.Exit(1)
	}
	l, err := net.Listen("unix", f.apiSock)
	if err != nil {
		v.logf("ERROR", "Failed to open the API socket at: %s. Check that it is not already used.", f.apiSock)
		fmt.Fprintf(os.Stderr, "Error: RunWithApi(FailedToBindSocket(%q))\n", f.apiSock)
		os.Exit(1)
	}
	srv := &http.Server{Handler: v}
	_ = srv.Serve(l)
}

func (v *vm) logf(level, format string, a ...any) {
	if v.logger == nil {
		return
	}
	line := fmt.Sprintf(format, a...)
	prefix := fmt.Sprintf("%s [%s", time.Now().UTC().Format(time.RFC3339Nano), v.f.id)
	if v.f.showLevel {
		prefix += ":" + level
	}
	if v.f.showOrigin {
		prefix += ":src/vmm/src/fake.rs:1"
	}
	fmt.Fprintf(v.logger, "%s] %s\n", prefix, line)
}

func fault(w http.ResponseWriter, code int, format string, a ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	b, _ := json.Marshal(map[string]string{"fault_message": fmt.Sprintf(format, a...)})
	w.Write(b)
}

func (v *vm) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(v.f.payloadLimit)+1))
	if err != nil {
		fault(w, 400, "%v", err)
		return
	}
	if len(body) > v.f.payloadLimit {
		fault(w, 400, "Request payload with size %d is larger than the limit of %d allowed by server.", r.ContentLength, v.f.payloadLimit)
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	rec, _ := json.Marshal(map[string]any{"method": r.Method, "path": r.URL.Path, "body": json.RawMessage(orNull(body))})
	v.journal.Write(append(rec, '\n'))
	v.logf("INFO", "The API server received a %s request on %q.", r.Method[:1]+strings.ToLower(r.Method[1:]), r.URL.Path)

	path := r.URL.Path
	switch {
	case r.Method == "GET" && path == "/":
		state := v.state
		for f := range strings.FieldsSeq(v.bootArgs) {
			if s, ok := strings.CutPrefix(f, "fake.state="); ok && state == "Running" {
				state = s
			}
		}
		writeJSON(w, map[string]string{"app_name": "Firecracker", "id": v.f.id, "state": state, "vmm_version": "1.10.1"})
	case r.Method == "GET" && path == "/mmds":
		if v.mmds == nil {
			fault(w, 404, "The MMDS data store is not initialized.")
			return
		}
		writeJSON(w, v.mmds)
	case r.Method == "PUT" && path == "/mmds":
		var doc any
		if err := strictDecode(body, &doc); err != nil {
			fault(w, 400, "An error occurred when deserializing the json body of a request: %v.", err)
			return
		}
		if _, ok := doc.(map[string]any); !ok {
			fault(w, 400, "The MMDS data store must be a JSON object.")
			return
		}
		if len(body) > v.f.mmdsLimit {
			fault(w, 400, "The MMDS patch request doesn't fit.")
			return
		}
		v.mmds = doc
		w.WriteHeader(204)
	case r.Method == "PUT" && path == "/actions":
		v.action(w, body)
	case r.Method == "PATCH" && path == "/vm":
		var s struct {
			State string `json:"state"`
		}
		if err := strictDecode(body, &s); err != nil {
			fault(w, 400, "An error occurred when deserializing the json body of a request: %v.", err)
			return
		}
		if v.state == "Not started" {
			fault(w, 400, "The requested operation is not supported before starting the microVM.")
			return
		}
		switch s.State {
		case "Paused":
			v.state = "Paused"
		case "Resumed":
			v.state = "Running"
		default:
			fault(w, 400, "An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `Paused` or `Resumed`.", s.State)
			return
		}
		w.WriteHeader(204)
	case r.Method == "PUT":
		if v.state != "Not started" {
			fault(w, 400, "The requested operation is not supported after starting the microVM.")
			return
		}
		v.preBoot(w, path, body)
	default:
		fault(w, 400, "Invalid request method and/or path: %s %s.", r.Method, path)
	}
}

func orNull(b []byte) []byte {
	if len(bytes.TrimSpace(b)) == 0 {
		return []byte("null")
	}
	return b
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	b, _ := json.Marshal(v)
	w.Write(b)
}

// strictDecode decodes like serde with deny_unknown_fields.
func strictDecode(body []byte, out any) error {
	d := json.NewDecoder(bytes.NewReader(body))
	d.DisallowUnknownFields()
	if err := d.Decode(out); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing characters")
	}
	return nil
}

// Firecracker's request documents, with the fields it accepts.
type (
	bootSource struct {
		KernelImagePath *string `json:"kernel_image_path"`
		BootArgs        string  `json:"boot_args"`
		InitrdPath      string  `json:"initrd_path"`
	}
	drive struct {
		DriveID      *string         `json:"drive_id"`
		PathOnHost   string          `json:"path_on_host"`
		IsRootDevice *bool           `json:"is_root_device"`
		IsReadOnly   *bool           `json:"is_read_only"`
		Partuuid     string          `json:"partuuid"`
		CacheType    string          `json:"cache_type"`
		IoEngine     string          `json:"io_engine"`
		RateLimiter  json.RawMessage `json:"rate_limiter"`
		Socket       string          `json:"socket"`
	}
	machineConfig struct {
		VcpuCount       *int   `json:"vcpu_count"`
		MemSizeMib      *int   `json:"mem_size_mib"`
		Smt             bool   `json:"smt"`
		TrackDirtyPages bool   `json:"track_dirty_pages"`
		CPUTemplate     string `json:"cpu_template"`
		HugePages       string `json:"huge_pages"`
	}
	netIface struct {
		IfaceID       *string         `json:"iface_id"`
		HostDevName   *string         `json:"host_dev_name"`
		GuestMAC      string          `json:"guest_mac"`
		MTU           int             `json:"mtu"`
		RxRateLimiter json.RawMessage `json:"rx_rate_limiter"`
		TxRateLimiter json.RawMessage `json:"tx_rate_limiter"`
	}
	mmdsConfig struct {
		Version           string    `json:"version"`
		NetworkInterfaces *[]string `json:"network_interfaces"`
		IPv4Address       string    `json:"ipv4_address"`
		ImdsCompat        bool      `json:"imds_compat"`
	}
	metrics struct {
		MetricsPath *string `json:"metrics_path"`
	}
	vsock struct {
		GuestCID *int   `json:"guest_cid"`
		UDSPath  string `json:"uds_path"`
		VsockID  string `json:"vsock_id"`
	}
)

func (v *vm) preBoot(w http.ResponseWriter, path string, body []byte) {
	decode := func(out any) bool {
		if err := strictDecode(body, out); err != nil {
			fault(w, 400, "An error occurred when deserializing the json body of a request: %v.", err)
			return false
		}
		return true
	}
	missing := func(field string) {
		fault(w, 400, "An error occurred when deserializing the json body of a request: missing field `%s`.", field)
	}
	switch {
	case path == "/boot-source":
		var b bootSource
		if !decode(&b) {
			return
		}
		if b.KernelImagePath == nil {
			missing("kernel_image_path")
			return
		}
		for _, p := range []string{*b.KernelImagePath, b.InitrdPath} {
			if p == "" {
				continue
			}
			if _, err := os.Stat(p); err != nil {
				fault(w, 400, "The kernel file cannot be opened: %v", err)
				return
			}
		}
		v.boot = map[string]any{"kernel_image_path": *b.KernelImagePath}
		v.bootArgs = b.BootArgs
	case path == "/machine-config":
		var m machineConfig
		if !decode(&m) {
			return
		}
		if m.VcpuCount == nil {
			missing("vcpu_count")
			return
		}
		if m.MemSizeMib == nil {
			missing("mem_size_mib")
			return
		}
		if *m.VcpuCount < 1 || *m.VcpuCount > 32 {
			fault(w, 400, "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
			return
		}
		v.machine = map[string]any{"vcpu_count": *m.VcpuCount, "mem_size_mib": *m.MemSizeMib}
	case strings.HasPrefix(path, "/drives/"):
		var d drive
		if !decode(&d) {
			return
		}
		id := strings.TrimPrefix(path, "/drives/")
		switch {
		case d.DriveID == nil:
			missing("drive_id")
			return
		case d.IsRootDevice == nil:
			missing("is_root_device")
			return
		case *d.DriveID != id:
			fault(w, 400, "The id from the path [%s] does not match the id from the body [%s]!", id, *d.DriveID)
			return
		case !validID(id):
			fault(w, 400, "Invalid ID: %s", id)
			return
		case d.PathOnHost == "" || d.IsReadOnly == nil:
			fault(w, 400, "Unable to create the virtio block device: path_on_host and is_read_only are required")
			return
		case *d.IsRootDevice && v.rootDrive != "" && v.rootDrive != id:
			fault(w, 400, "A root block device already exists!")
			return
		}
		mode := os.O_RDWR
		if *d.IsReadOnly {
			mode = os.O_RDONLY
		}
		file, err := os.OpenFile(d.PathOnHost, mode, 0)
		if err != nil {
			fault(w, 400, "Unable to create the virtio block device: BackingFile(%v, %q)", err, d.PathOnHost)
			return
		}
		if *d.IsRootDevice {
			v.rootDrive = id
		}
		v.drives[id] = file
	case strings.HasPrefix(path, "/network-interfaces/"):
		var n netIface
		if !decode(&n) {
			return
		}
		id := strings.TrimPrefix(path, "/network-interfaces/")
		switch {
		case n.IfaceID == nil:
			missing("iface_id")
			return
		case n.HostDevName == nil:
			missing("host_dev_name")
			return
		case *n.IfaceID != id:
			fault(w, 400, "The id from the path [%s] does not match the id from the body [%s]!", id, *n.IfaceID)
			return
		}
		if n.GuestMAC != "" {
			if _, err := net.ParseMAC(n.GuestMAC); err != nil {
				fault(w, 400, "An error occurred when deserializing the json body of a request: invalid MAC address %q.", n.GuestMAC)
				return
			}
		}
		tap, err := openTap(*n.HostDevName)
		if err != nil {
			fault(w, 400, "Could not create the network device: Open tap device failed: Error while creating ifreq structure: %v. Invalid TUN/TAP Backend provided by %s. Check our documentation on setting up the network devices.", err, *n.HostDevName)
			return
		}
		v.ifaces[id] = tap
	case path == "/mmds/config":
		var c mmdsConfig
		if !decode(&c) {
			return
		}
		if c.NetworkInterfaces == nil {
			missing("network_interfaces")
			return
		}
		if c.Version != "" && c.Version != "V1" && c.Version != "V2" {
			fault(w, 400, "An error occurred when deserializing the json body of a request: unknown variant `%s`, expected `V1` or `V2`.", c.Version)
			return
		}
		for _, id := range *c.NetworkInterfaces {
			if v.ifaces[id] == nil {
				fault(w, 400, "The list of network interface IDs that allow forwarding MMDS requests is empty or contains at least one invalid ID.")
				return
			}
		}
		if len(*c.NetworkInterfaces) == 0 {
			fault(w, 400, "The list of network interface IDs that allow forwarding MMDS requests is empty or contains at least one invalid ID.")
			return
		}
		if ip := net.ParseIP(c.IPv4Address); c.IPv4Address != "" && (ip == nil || ip.To4() == nil || !ip.IsLinkLocalUnicast()) {
			fault(w, 400, "The MMDS IPv4 address is not link local.")
			return
		}
		v.mmdsConfig = map[string]any{"version": c.Version}
	case path == "/metrics":
		var m metrics
		if !decode(&m) {
			return
		}
		if m.MetricsPath == nil {
			missing("metrics_path")
			return
		}
		if v.metrics != nil {
			fault(w, 400, "Reinitialization of metrics not allowed.")
			return
		}
		file, err := os.OpenFile(*m.MetricsPath, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			fault(w, 400, "Cannot open the metrics file: %v", err)
			return
		}
		v.metrics = file
	case path == "/logger":
		fault(w, 400, "Reinitialization of logger not allowed.")
		return
	case path == "/vsock":
		var s vsock
		if !decode(&s) {
			return
		}
		if s.GuestCID == nil {
			missing("guest_cid")
			return
		}
		if s.UDSPath == "" {
			missing("uds_path")
			return
		}
		if *s.GuestCID < 3 {
			fault(w, 400, "Invalid guest CID %d: it must be 3 or greater.", *s.GuestCID)
			return
		}
		v.vsockPath = s.UDSPath
	default:
		fault(w, 400, "Invalid request method and/or path: PUT %s.", path)
		return
	}
	w.WriteHeader(204)
}

// validID is Firecracker's resource id check: 1 to 64 of [A-Za-z0-9_].
func validID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// openTap attaches to a TAP device by name as Firecracker does.
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

func (v *vm) action(w http.ResponseWriter, body []byte) {
	var a struct {
		ActionType *string `json:"action_type"`
	}
	if err := strictDecode(body, &a); err != nil {
		fault(w, 400, "An error occurred when deserializing the json body of a request: %v.", err)
		return
	}
	if a.ActionType == nil {
		fault(w, 400, "An error occurred when deserializing the json body of a request: missing field `action_type`.")
		return
	}
	switch *a.ActionType {
	case "InstanceStart":
		if v.state != "Not started" {
			fault(w, 400, "The requested operation is not supported after starting the microVM.")
			return
		}
		if v.boot == nil {
			fault(w, 400, "Cannot start microvm without kernel configuration.")
			return
		}
		if v.vsockPath != "" {
			l, err := net.Listen("unix", v.vsockPath)
			if err != nil {
				fault(w, 400, "Cannot create vsock device: %v", err)
				return
			}
			v.vsock = l
			go serveVsock(l)
		}
		v.state = "Running"
		v.flushMetrics()
		go v.guest()
	case "SendCtrlAltDel":
		if v.state == "Not started" {
			fault(w, 400, "The requested operation is not supported before starting the microVM.")
			return
		}
		if !strings.Contains(v.bootArgs, "fake.ignore_ctrlaltdel") {
			go func() {
				time.Sleep(50 * time.Millisecond)
				v.console("reboot: Restarting system")
				v.exit(0)
			}()
		}
	case "FlushMetrics":
		v.flushMetrics()
	default:
		fault(w, 400, "An error occurred when deserializing the json body of a request: unknown variant `%s`.", *a.ActionType)
		return
	}
	w.WriteHeader(204)
}

func (v *vm) flushMetrics() {
	if v.metrics == nil {
		return
	}
	b, _ := json.Marshal(map[string]any{"utc_timestamp_ms": time.Now().UnixMilli(), "api_server": map[string]int{"process_startup_time_us": 1}})
	v.metrics.Write(append(b, '\n'))
}

var consoleMu sync.Mutex

func (v *vm) console(line string) {
	consoleMu.Lock()
	defer consoleMu.Unlock()
	fmt.Fprintf(os.Stdout, "[    0.%06d] %s\r\n", time.Now().Nanosecond()/1000, line)
}

// guest acts out a boot on the serial console.
func (v *vm) guest() {
	v.console("Linux version 6.1.0-fake (fake firecracker guest)")
	v.console("Command line: " + v.bootArgs)
	time.Sleep(20 * time.Millisecond)
	if strings.Contains(v.bootArgs, "fake.panic") {
		v.console("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)")
		if strings.Contains(" "+v.bootArgs+" ", " panic=1 ") {
			v.console("Rebooting in 1 seconds..")
			time.Sleep(100 * time.Millisecond)
			v.exit(0) // a guest reboot ends Firecracker
		}
		return
	}
	v.console("fake-init: running")
}

func (v *vm) exit(code int) {
	v.logf("INFO", "Vmm is stopping.")
	os.Exit(code)
}

// serveVsock answers host-initiated connections as Firecracker's vsock
// muxer does: "CONNECT <port>\n" -> "OK <host port>\n", then echoes.
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
			port, ok := strings.CutPrefix(strings.TrimSpace(line), "CONNECT ")
			if _, err := strconv.Atoi(port); !ok || err != nil {
				return
			}
			fmt.Fprintf(c, "OK 1073741824\n")
			io.Copy(c, r)
		}()
	}
}
