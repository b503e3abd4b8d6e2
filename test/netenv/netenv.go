// Package netenv builds, on one machine, the network several Liquid Metal
// hosts share, for tests: each "host" is a network namespace whose eth0 is
// one end of a veth pair standing in for the VM VLAN between the hosts
// (this kernel has no 802.1Q; with it, the config's vlanID would tag the
// veth), set up by internal/hostnet exactly as "flintlockd host network
// apply" does (bridge, address, dnsmasq on the host that serves DHCP, NAT,
// filters). A third namespace stands in for the internet, reachable
// through the first host's wan0 with an HTTP listener that tells who
// called. Guests are real QEMU microVMs started inside a host namespace on
// TAP devices made by internal/network, with a NoCloud disk made by
// internal/metadata and, optionally, the host's metadata service
// (internal/mds); or a real flintlockd runs inside a host namespace
// (StartFlintlockd) and makes them.
//
// Everything is removed when the test ends (namespaces, processes, the
// hosts' networks through hostnet.Teardown, which must leave each host
// namespace as it found it).
package netenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/liquidmetal-go/liquidmetal/internal/hostnet"
	"github.com/liquidmetal-go/liquidmetal/internal/mds"
)

// NS is a named network namespace ("ip netns add") owned by a test.
type NS struct {
	Name string
	t    testing.TB
}

// NewNS creates a namespace with lo up, removed (with every process left
// in it) when the test ends.
func NewNS(t testing.TB, prefix string) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: network namespaces need root")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	n := &NS{Name: prefix + "-" + hex.EncodeToString(b), t: t}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() {
		out, _ := exec.Command("ip", "netns", "pids", n.Name).Output()
		for _, p := range strings.Fields(string(out)) {
			// This process shows up when a thread locked into the
			// namespace was its main thread.
			if pid, err := strconv.Atoi(p); err == nil && pid != os.Getpid() {
				_ = killPid(pid)
			}
		}
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	n.Run("ip", "link", "set", "lo", "up")
	return n
}

// Command is a command that runs in the namespace.
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command in the namespace and returns its output; an error
// fails the test.
func (n *NS) Run(name string, args ...string) string {
	n.t.Helper()
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("[%s] %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Do runs f on an OS thread inside the namespace: netlink, nftables,
// sockets and child processes f makes belong to it. A panic in f fails
// the test.
func (n *NS) Do(f func()) {
	n.t.Helper()
	if err := n.in(func() error { f(); return nil }); err != nil {
		n.t.Fatalf("in namespace %s: %v", n.Name, err)
	}
}

// in runs f on a locked thread moved into the namespace and moves the
// thread back before unlocking it. Threads are not thrown away: a child
// started with Pdeathsig (the test registry, containerd) dies with the
// thread that forked it, and that may be any thread of the pool. Only a
// thread that cannot be moved back is left locked, to end with f.
func (n *NS) in(f func() error) error {
	done := make(chan error, 1)
	go func() {
		var err error
		back := false
		runtime.LockOSThread()
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
			}
			if back {
				runtime.UnlockOSThread()
			}
			done <- err
		}()
		orig, err := netns.Get()
		if err != nil {
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(n.Name)
		if err != nil {
			back = true
			return
		}
		defer h.Close()
		if err = netns.Set(h); err != nil {
			back = true
			return
		}
		defer func() { back = netns.Set(orig) == nil }()
		err = f()
	}()
	return <-done
}

// Snapshot is the namespace's network as the tools print it (links with
// details, addresses, routes of all tables, the nftables ruleset, IPv4
// forwarding), with the bridge timers that run on their own blanked.
func (n *NS) Snapshot() string {
	n.t.Helper()
	var b strings.Builder
	for _, c := range [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "addr", "show"},
		{"ip", "route", "show", "table", "all"},
		{"nft", "list", "ruleset"},
		{"sysctl", "net.ipv4.ip_forward"},
	} {
		fmt.Fprintf(&b, "$ %s\n%s\n", strings.Join(c, " "), n.Run(c[0], c[1:]...))
	}
	return timerRE.ReplaceAllString(b.String(), "${1} -")
}

var timerRE = regexp.MustCompile(`(_timer)\s+[0-9.]+`)

// Serve runs an HTTP handler on addr inside the namespace until the test
// ends.
func (n *NS) Serve(addr string, h http.Handler) {
	n.t.Helper()
	var lis net.Listener
	var err error
	n.Do(func() { lis, err = net.Listen("tcp", addr) })
	if err != nil {
		n.t.Fatalf("[%s] listen %s: %v", n.Name, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	n.t.Cleanup(func() { _ = srv.Close() })
}

// settle waits (up to 10 s) until the namespace's links have their
// carrier and its addresses are past duplicate address detection, so that
// snapshots taken from then on change only through what the test does.
func (n *NS) settle() {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		links, addrs := n.Run("ip", "-o", "link", "show", "up"), n.Run("ip", "-o", "addr", "show")
		if !strings.Contains(links, "NO-CARRIER") && !strings.Contains(addrs, "tentative") {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("[%s] the links did not settle:\n%s\n%s", n.Name, links, addrs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Host is a namespace set up as a Liquid Metal host.
type Host struct {
	*NS
	// Config is the host network applied.
	Config *hostnet.Config
	// Before is the namespace before the host network was applied;
	// teardown must bring it back.
	Before string
	// MDS is the host's metadata service, when StartMDS was called.
	MDS *mds.Server
}

// Apply applies the host network config in the namespace.
func (h *Host) Apply(opts hostnet.Options) (res *hostnet.Result, err error) {
	h.Do(func() { res, err = hostnet.Apply(context.Background(), h.Config, opts) })
	return res, err
}

// Teardown removes the host network.
func (h *Host) Teardown() (res *hostnet.Result, err error) {
	h.Do(func() { res, err = hostnet.Teardown(context.Background(), h.Config, hostnet.Options{}) })
	return res, err
}

// StartMDS starts the host's metadata service, as flintlockd would, and
// closes it when the test ends.
func (h *Host) StartMDS(opts mds.Options) *mds.Server {
	h.t.Helper()
	var err error
	h.Do(func() { h.MDS, err = mds.New(opts) })
	if err != nil {
		h.t.Fatalf("[%s] metadata service: %v", h.Name, err)
	}
	h.t.Cleanup(func() { _ = h.MDS.Close() })
	return h.MDS
}

// Internet is the namespace standing in for the internet.
type Internet struct {
	*NS
	// Addr is the listener's address ("198.51.100.1:8080"): it answers
	// "INTERNET <token> from <caller's address>".
	Addr  string
	Token string
}

// Env is two hosts joined by the VM VLAN and the internet behind the
// first.
type Env struct {
	Hosts    []*Host
	Internet *Internet
}

// Options shape the Env. Every address is the namespaces' own.
type Options struct {
	// Subnet is the VM subnet's first three octets (default "10.50.0"):
	// host i has address .(i+1), the first host serves DHCP from .100 to
	// .150 and keeps .10-.19 as the VIP range.
	Subnet string
	// ManagementPorts are closed to VMs on every host.
	ManagementPorts []int
	// StaticLeases are given by the DHCP server.
	StaticLeases []hostnet.StaticLease
}

// Bridge is the VM bridge of every host.
const Bridge = "lmbr0"

// New builds the environment and applies each host's network. At the end
// of the test each host network is torn down and the namespace compared
// with what it was before apply: any difference fails the test.
func New(t *testing.T, o Options) *Env {
	t.Helper()
	if o.Subnet == "" {
		o.Subnet = "10.50.0"
	}
	for _, tool := range []string{"ip", "nft", "dnsmasq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIPPED: %s is not installed (iproute2, nftables, dnsmasq-base): %v", tool, err)
		}
	}
	e := &Env{}
	a, b := &Host{NS: NewNS(t, "lm-hosta")}, &Host{NS: NewNS(t, "lm-hostb")}
	e.Hosts = []*Host{a, b}
	inet := &Internet{NS: NewNS(t, "lm-inet"), Addr: "198.51.100.1:8080", Token: randomHex(6)}
	e.Internet = inet

	// The VM VLAN: a veth between the hosts' eth0.
	a.Run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.Name)
	a.Run("ip", "link", "set", "eth0", "up")
	b.Run("ip", "link", "set", "eth0", "up")
	// The internet: 198.51.100.0/24 (TEST-NET-2) between host A's wan0
	// and the internet's inet0; host A routes everything there.
	a.Run("ip", "link", "add", "wan0", "type", "veth", "peer", "name", "inet0", "netns", inet.Name)
	a.Run("ip", "addr", "add", "198.51.100.2/24", "dev", "wan0")
	a.Run("ip", "link", "set", "wan0", "up")
	a.Run("ip", "route", "add", "default", "via", "198.51.100.1")
	inet.Run("ip", "addr", "add", "198.51.100.1/24", "dev", "inet0")
	inet.Run("ip", "link", "set", "inet0", "up")
	inet.Serve(inet.Addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "INTERNET %s from %s\n", inet.Token, host)
	}))

	for _, h := range e.Hosts {
		h.settle()
	}
	for i, h := range e.Hosts {
		c := &hostnet.Config{
			StateDir:        t.TempDir() + "/hostnet",
			ParentInterface: "eth0",
			Bridge:          Bridge,
			Address:         fmt.Sprintf("%s.%d/24", o.Subnet, i+1),
			ManagementPorts: o.ManagementPorts,
		}
		if i == 0 {
			c.DHCP = &hostnet.DHCP{Range: o.Subnet + ".100-" + o.Subnet + ".150", LeaseTime: "10m"}
			c.VIPRange = o.Subnet + ".10-" + o.Subnet + ".19"
			c.StaticLeases = o.StaticLeases
			c.NAT = &hostnet.NAT{EgressInterface: "wan0"}
		}
		y, err := yamlOf(c)
		if err != nil {
			t.Fatal(err)
		}
		// Through the parser, as the command reads its file.
		if h.Config, err = hostnet.ParseConfig(y); err != nil {
			t.Fatalf("host %d config: %v", i, err)
		}
		h.Before = h.Snapshot()
		if _, err := h.Apply(hostnet.Options{}); err != nil {
			t.Fatalf("[%s] apply: %v", h.Name, err)
		}
		t.Cleanup(func() {
			if _, err := h.Teardown(); err != nil {
				t.Errorf("[%s] teardown: %v", h.Name, err)
				return
			}
			if got := h.Snapshot(); got != h.Before {
				t.Errorf("[%s] teardown did not restore the namespace:\n%s", h.Name, Diff(h.Before, got))
			}
		})
	}
	return e
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Diff shows the lines only in a (-) or only in b (+).
func Diff(a, b string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	am, bm := count(a), count(b)
	var out bytes.Buffer
	for _, l := range strings.Split(a, "\n") {
		if bm[l] == 0 {
			fmt.Fprintf(&out, "- %s\n", l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if am[l] == 0 {
			fmt.Fprintf(&out, "+ %s\n", l)
		}
	}
	if out.Len() == 0 {
		return "(the same lines in another order or number)"
	}
	return out.String()
}

func killPid(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}
