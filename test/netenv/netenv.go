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
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/hostnet"
	"github.com/liquidmetal-go/liquidmetal/internal/mds"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// NS is a named network namespace owned by a test (testenv.NetNS).
type NS = testenv.NetNS

// NewNS creates a namespace with lo up, removed (with every process left
// in it) when the test ends.
func NewNS(t testing.TB, prefix string) *NS {
	t.Helper()
	return testenv.NewNetNS(t, prefix)
}

// settle waits (up to 10 s) until the namespace's links have their
// carrier and its addresses are past duplicate address detection, so that
// snapshots taken from then on change only through what the test does.
func settle(t testing.TB, n *NS) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		links, addrs := n.Run("ip", "-o", "link", "show", "up"), n.Run("ip", "-o", "addr", "show")
		if !strings.Contains(links, "NO-CARRIER") && !strings.Contains(addrs, "tentative") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("[%s] the links did not settle:\n%s\n%s", n.Name, links, addrs)
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

	t testing.TB
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
	a, b := &Host{NS: NewNS(t, "lm-hosta"), t: t}, &Host{NS: NewNS(t, "lm-hostb"), t: t}
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
		settle(t, h.NS)
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
