// Package mds owns flintlockd's metadata service: the EC2-style paths that
// cloud-init reads (/latest/meta-data/..., /latest/user-data), Firecracker
// MMDS V2 session tokens (PUT /latest/api/token), and the NoCloud
// documents over HTTP (/nocloud/<document>), served to each VM at
// Options.Address (by default 169.254.169.254:80).
//
// # Who is asking
//
// A VM is identified by the host interface its request arrives on — never
// by anything in the request. Its TAPs are ports of a bridge, and an IP
// hook only sees the bridge, so the service owns two nftables tables:
//
//   - "bridge liquidmetal-mds", chain prerouting: for each TAP of a VM,
//     iifname "<tap>" ip daddr 169.254.169.254 tcp dport 80 meta mark set
//     <the VM's mark>;
//   - "ip liquidmetal-mds": chain prerouting (nat) redirects packets with
//     that mark and destination to the VM's own listener port on the host
//     (redirect: the address of the bridge the request came in on), and
//     chain input drops packets to that port that do not carry the VM's
//     mark (a VM connecting to the port directly, another VM, anyone).
//
// Each registered VM has its own listener (an ephemeral port bound before
// the rules that lead to it exist, and listening only once they do), whose
// handler holds that VM's data only: a request can name any instance it
// likes, it only ever reaches its own. The mark is only set on packets to
// 169.254.169.254:80, which the redirect consumes, so no routed traffic
// carries it. Only TAP devices on a bridge can be served this way (a
// macvtap bypasses the host's stack): such VMs use the NoCloud disk.
//
// The tables and listeners live in the network namespace New was called
// in, whatever thread later calls Register.
package mds

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Defaults.
const (
	// Address is where VMs find the service.
	Address = "169.254.169.254"
	// Port is the service's port as VMs see it.
	Port = 80
	// DefaultMarkBase is the high half of the packet marks (0x4c4d is
	// "LM"); a VM's mark is base+n, n < 65536.
	DefaultMarkBase uint32 = 0x4c4d0000
	// TableName names both nftables tables.
	TableName = "liquidmetal-mds"
)

// DefaultAddress is Address:Port.
var DefaultAddress = netip.AddrPortFrom(netip.MustParseAddr(Address), Port)

// Options configure a Server.
type Options struct {
	// Address is where VMs find the service: an IPv4 address and TCP port
	// (default 169.254.169.254:80, where cloud-init's EC2 source and
	// Firecracker's MMDS clients look).
	Address netip.AddrPort
	// RequireToken refuses requests without a valid session token (MMDS
	// V2 only). By default a token is checked when given, and requests
	// without one are served (IMDSv1 / MMDS V1 clients).
	RequireToken bool
	// MarkBase is the high 16 bits of the packet marks used (default
	// DefaultMarkBase); its low 16 bits must be zero.
	MarkBase uint32
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Server is the metadata service of one host.
type Server struct {
	opts Options
	log  *slog.Logger
	nsFD int // the network namespace the service lives in

	mu     sync.Mutex
	vms    map[string]*vm
	closed bool
}

// vm is one registered VM.
type vm struct {
	uid     string
	devices []string
	mark    uint32
	port    int
	handler *vmHandler
	srv     *http.Server
	lis     net.Listener
}

// New starts the service in the calling thread's network namespace: it
// replaces the service's nftables tables with empty ones (dropping rules a
// previous process left; VMs are registered again by the reconciler).
func New(opts Options) (*Server, error) {
	if opts.MarkBase == 0 {
		opts.MarkBase = DefaultMarkBase
	}
	if !opts.Address.IsValid() {
		opts.Address = DefaultAddress
	}
	if !opts.Address.Addr().Is4() || opts.Address.Port() == 0 {
		return nil, fmt.Errorf("mds: address %s: an IPv4 address and a port are needed: %w", opts.Address, errdefs.ErrInvalidArgument)
	}
	if opts.MarkBase&0xffff != 0 {
		return nil, fmt.Errorf("mds: mark base %#x has low bits set: %w", opts.MarkBase, errdefs.ErrInvalidArgument)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	runtime.LockOSThread()
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("mds: network namespace: %w", err)
	}
	s := &Server{opts: opts, log: log.With("component", "mds"), nsFD: fd, vms: map[string]*vm{}}
	if err := s.inNS(s.writeRules); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return s, nil
}

// Register makes the VM uid's data (the NoCloud documents: meta-data,
// user-data, vendor-data, network-config...) available to requests
// arriving on its TAP devices. Registering again replaces the data and the
// devices; the VM keeps its listener, and tokens it holds stay valid.
func (s *Server) Register(uid string, devices []string, docs map[string][]byte) error {
	if uid == "" || len(devices) == 0 {
		return fmt.Errorf("mds: uid and at least one device are required: %w", errdefs.ErrInvalidArgument)
	}
	for _, d := range devices {
		if d == "" || len(d) > unix.IFNAMSIZ-1 {
			return fmt.Errorf("mds: invalid device name %q: %w", d, errdefs.ErrInvalidArgument)
		}
	}
	data, err := newVMData(uid, docs)
	if err != nil {
		return fmt.Errorf("mds: %s: %v: %w", uid, err, errdefs.ErrInvalidArgument)
	}
	devices = slices.Clone(devices)
	slices.Sort(devices)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("mds: closed: %w", errdefs.ErrFailedPrecondition)
	}
	for other, v := range s.vms {
		if other == uid {
			continue
		}
		for _, d := range devices {
			if slices.Contains(v.devices, d) {
				return fmt.Errorf("mds: device %s is registered to VM %s: %w", d, other, errdefs.ErrAlreadyExists)
			}
		}
	}
	if v := s.vms[uid]; v != nil {
		v.handler.set(data)
		if slices.Equal(v.devices, devices) {
			return nil
		}
		old := v.devices
		v.devices = devices
		if err := s.inNS(s.writeRules); err != nil {
			v.devices = old
			return err
		}
		return nil
	}

	mark, err := s.freeMark()
	if err != nil {
		return err
	}
	v := &vm{uid: uid, devices: devices, mark: mark, handler: newVMHandler(data, s.opts.RequireToken)}
	// Bind first, add the rules, and only then listen: no connection can
	// reach the port before the rule that guards it exists.
	var fd int
	if err := s.inNS(func() (err error) { fd, v.port, err = bindTCP4(); return err }); err != nil {
		return err
	}
	s.vms[uid] = v
	err = s.inNS(s.writeRules)
	if err == nil {
		v.lis, err = listenFD(fd)
	} else {
		unix.Close(fd)
	}
	if err != nil {
		delete(s.vms, uid)
		_ = s.inNS(s.writeRules)
		return err
	}
	v.srv = &http.Server{Handler: v.handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	go func() {
		if err := v.srv.Serve(v.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("metadata listener stopped", "uid", uid, "error", err)
		}
	}()
	s.log.Info("registered VM", "uid", uid, "devices", devices, "port", v.port, "mark", fmt.Sprintf("%#x", mark))
	return nil
}

// Unregister stops serving the VM uid. An unknown uid is fine.
func (s *Server) Unregister(uid string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vms[uid]
	if v == nil {
		return nil
	}
	delete(s.vms, uid)
	err := s.inNS(s.writeRules)
	_ = v.srv.Close()
	s.log.Info("unregistered VM", "uid", uid)
	return err
}

// Registered lists the registered VM uids, sorted.
func (s *Server) Registered() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	uids := make([]string, 0, len(s.vms))
	for u := range s.vms {
		uids = append(uids, u)
	}
	slices.Sort(uids)
	return uids
}

// Port returns the host port of the VM uid's listener (0 when it is not
// registered): for diagnostics and tests; VMs never use it.
func (s *Server) Port(uid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v := s.vms[uid]; v != nil {
		return v.port
	}
	return 0
}

// Close stops every listener and removes the service's nftables tables.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for _, v := range s.vms {
		_ = v.srv.Close()
	}
	s.vms = map[string]*vm{}
	err := s.inNS(deleteTables)
	unix.Close(s.nsFD)
	return err
}

// freeMark is the lowest mark no VM uses.
func (s *Server) freeMark() (uint32, error) {
	used := map[uint32]bool{}
	for _, v := range s.vms {
		used[v.mark] = true
	}
	for n := uint32(1); n <= 0xffff; n++ {
		if m := s.opts.MarkBase | n; !used[m] {
			return m, nil
		}
	}
	return 0, fmt.Errorf("mds: no free packet mark: %w", errdefs.ErrResourceExhausted)
}

// inNS runs f on a thread in the service's network namespace: the calling
// one when it is there already, else another thread moved there for f and
// moved back after (a thread that cannot be moved back is left locked, so
// that Go ends it).
func (s *Server) inNS(f func() error) error {
	runtime.LockOSThread()
	if sameNS(s.nsFD) {
		defer runtime.UnlockOSThread()
		return f()
	}
	runtime.UnlockOSThread()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("mds: network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(s.nsFD, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("mds: entering the network namespace: %w", err)
			return
		}
		err = f()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func sameNS(fd int) bool {
	var a, b unix.Stat_t
	if unix.Fstat(fd, &a) != nil || unix.Stat("/proc/thread-self/ns/net", &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// bindTCP4 binds a TCP socket to an ephemeral port on every IPv4 address
// (without listening yet) and returns it and the port.
func bindTCP4() (int, int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("mds: socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{}); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("mds: bind: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("mds: getsockname: %w", err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port, nil
}

// listenFD starts listening on a bound socket and hands it to net.
func listenFD(fd int) (net.Listener, error) {
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mds: listen: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mds-listener")
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("mds: listener: %w", err)
	}
	return l, nil
}
