package mds

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// testbed is a host namespace with a bridge (10.9.0.1/24) and two VM
// namespaces whose eth0 (10.9.0.11, .12) are ports tapa and tapb of the
// bridge, as a VM's TAP would be.
type testbed struct {
	host, vmA, vmB *testenv.NetNS
}

func newTestbed(t *testing.T) *testbed {
	tb := &testbed{host: testenv.NewNetNS(t, "lmmds"), vmA: testenv.NewNetNS(t, "lmmds"), vmB: testenv.NewNetNS(t, "lmmds")}
	h := tb.host
	h.Run("ip", "link", "add", "br0", "type", "bridge")
	h.Run("ip", "addr", "add", "10.9.0.1/24", "dev", "br0")
	h.Run("ip", "link", "set", "br0", "up")
	for i, v := range []*testenv.NetNS{tb.vmA, tb.vmB} {
		tap := []string{"tapa", "tapb"}[i]
		h.Run("ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", v.Name)
		h.Run("ip", "link", "set", tap, "master", "br0", "up")
		v.Run("ip", "addr", "add", fmt.Sprintf("10.9.0.%d/24", 11+i), "dev", "eth0")
		v.Run("ip", "link", "set", "eth0", "up")
		v.Run("ip", "route", "add", "default", "via", "10.9.0.1")
	}
	return tb
}

// request sends one HTTP request from inside namespace n (optionally from
// source address src) to addr and returns the status and body, or the
// dial error.
func request(n *testenv.NetNS, src, addr, method, path string, headers map[string]string) (status int, body string, err error) {
	n.Do(func() {
		d := net.Dialer{Timeout: 1500 * time.Millisecond}
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		var c net.Conn
		if c, err = d.Dial("tcp", addr); err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, path, Address)
		for k, v := range headers {
			fmt.Fprintf(c, "%s: %s\r\n", k, v)
		}
		fmt.Fprint(c, "\r\n")
		var resp *http.Response
		if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err != nil {
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		status, body = resp.StatusCode, string(b)
	})
	return status, body, err
}

var mdsEndpoint = net.JoinHostPort(Address, strconv.Itoa(Port))

func docs(id, secret string) map[string][]byte {
	return map[string][]byte{
		"meta-data":      []byte("instance-id: " + id + "\nlocal-hostname: host-" + id + "\nplacement:\n  zone: z1\ntags: [a, b]\n"),
		"user-data":      []byte("#cloud-config\n# secret " + secret + "\n"),
		"network-config": []byte("version: 2\n"),
	}
}

// TestServeOwnDataOnly registers two VMs and checks, from each VM's
// namespace, that it reads its own documents at 169.254.169.254, that
// nothing in a request (path, query, headers, source address) gets it the
// other's data, that the listeners cannot be reached directly, and that
// tokens are per VM.
func TestServeOwnDataOnly(t *testing.T) {
	tb := newTestbed(t)
	var s *Server
	var err error
	tb.host.Do(func() { s, err = New(Options{}) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	// Register from this goroutine's thread, outside the namespace: the
	// service works in its own.
	if err := s.Register("vm-a", []string{"tapa"}, docs("vm-a", "SECRET-A")); err != nil {
		t.Fatal(err)
	}
	if err := s.Register("vm-b", []string{"tapb"}, docs("vm-b", "SECRET-B")); err != nil {
		t.Fatal(err)
	}
	rules := tb.host.Run("nft", "list", "ruleset")
	t.Logf("rules:\n%s", rules)

	get := func(v *testenv.NetNS, path string, headers map[string]string) (int, string) {
		t.Helper()
		st, body, err := request(v, "", mdsEndpoint, "GET", path, headers)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return st, body
	}
	for _, c := range []struct {
		vm           *testenv.NetNS
		id, secret   string
		otherID, otr string
	}{{tb.vmA, "vm-a", "SECRET-A", "vm-b", "SECRET-B"}, {tb.vmB, "vm-b", "SECRET-B", "vm-a", "SECRET-A"}} {
		if st, body := get(c.vm, "/latest/meta-data/instance-id", nil); st != 200 || body != c.id {
			t.Errorf("%s: instance-id = %d %q", c.id, st, body)
		}
		if st, body := get(c.vm, "/latest/user-data", nil); st != 200 || !strings.Contains(body, c.secret) {
			t.Errorf("%s: user-data = %d %q", c.id, st, body)
		}
		if _, body := get(c.vm, "/latest/meta-data/", nil); body != "instance-id\nlocal-hostname\nplacement/\ntags/" {
			t.Errorf("%s: meta-data listing = %q", c.id, body)
		}
		if _, body := get(c.vm, "/2009-04-04/meta-data/placement/zone", nil); body != "z1" {
			t.Errorf("%s: placement/zone = %q", c.id, body)
		}
		if _, body := get(c.vm, "/latest/meta-data/tags/1", nil); body != "b" {
			t.Errorf("%s: tags/1 = %q", c.id, body)
		}
		if _, body := get(c.vm, "/latest/meta-data/placement", map[string]string{"Accept": "application/json"}); body != "{\"zone\":\"z1\"}\n" {
			t.Errorf("%s: placement as JSON = %q", c.id, body)
		}
		if st, body := get(c.vm, "/nocloud/network-config", nil); st != 200 || body != "version: 2\n" {
			t.Errorf("%s: nocloud network-config = %d %q", c.id, st, body)
		}
		// Claims of being the other VM change nothing.
		for _, path := range []string{
			"/latest/meta-data/instance-id?instance-id=" + c.otherID,
			"/latest/meta-data/instance-id?uid=" + c.otherID,
		} {
			st, body := get(c.vm, path, map[string]string{
				"X-Instance-Id": c.otherID, "X-Forwarded-For": "10.9.0.12", "X-Real-Ip": "10.9.0.12", "Forwarded": "for=" + c.otherID,
			})
			if st != 200 || body != c.id {
				t.Errorf("%s claiming %s: %d %q", c.id, c.otherID, st, body)
			}
		}
		if _, body := get(c.vm, "/latest/user-data?vm="+c.otherID, nil); strings.Contains(body, c.otr) {
			t.Errorf("%s read %s's user-data", c.id, c.otherID)
		}
	}

	// vm-a sends from vm-b's address: the answer goes to vm-b's MAC (the
	// host's neighbour entry), so vm-a may get nothing; never vm-b's data.
	tb.vmA.Run("ip", "addr", "add", "10.9.0.12/32", "dev", "eth0")
	if st, body, err := request(tb.vmA, "10.9.0.12", mdsEndpoint, "GET", "/latest/meta-data/instance-id", nil); err == nil && body != "vm-a" {
		t.Errorf("vm-a with vm-b's source address: %d %q", st, body)
	}
	tb.vmA.Run("ip", "addr", "del", "10.9.0.12/32", "dev", "eth0")

	// The listeners are not reachable but through 169.254.169.254 from the
	// VM's own TAP: not by port from a VM, not from the host itself.
	for _, c := range []struct {
		from *testenv.NetNS
		addr string
		what string
	}{
		{tb.vmA, net.JoinHostPort("10.9.0.1", strconv.Itoa(s.Port("vm-b"))), "vm-a to vm-b's listener"},
		{tb.vmA, net.JoinHostPort("10.9.0.1", strconv.Itoa(s.Port("vm-a"))), "vm-a to its own listener by port"},
		{tb.host, net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port("vm-a"))), "the host to vm-a's listener"},
	} {
		if st, body, err := request(c.from, "", c.addr, "GET", "/latest/meta-data/instance-id", nil); err == nil {
			t.Errorf("%s: answered %d %q", c.what, st, body)
		}
	}

	// Tokens (MMDS V2): issued per VM, valid only there.
	st, tokA, err := request(tb.vmA, "", mdsEndpoint, "PUT", "/latest/api/token", map[string]string{headerTTL: "60"})
	if err != nil || st != 200 || tokA == "" {
		t.Fatalf("PUT token: %d %q %v", st, tokA, err)
	}
	if st, body := get(tb.vmA, "/latest/meta-data/instance-id", map[string]string{headerToken: tokA}); st != 200 || body != "vm-a" {
		t.Errorf("with token: %d %q", st, body)
	}
	if st, _ := get(tb.vmB, "/latest/meta-data/instance-id", map[string]string{headerToken: tokA}); st != 401 {
		t.Errorf("vm-a's token on vm-b: %d, want 401", st)
	}
	if st, _ := get(tb.vmA, "/latest/meta-data/instance-id", map[string]string{headerTokenEC2: tokA + "x"}); st != 401 {
		t.Errorf("a bad token: %d, want 401", st)
	}
	if st, _, _ := request(tb.vmA, "", mdsEndpoint, "PUT", "/latest/api/token", nil); st != 400 {
		t.Errorf("PUT token without TTL: %d, want 400", st)
	}

	// Registering again replaces the data, on the same port.
	port := s.Port("vm-a")
	if err := s.Register("vm-a", []string{"tapa"}, docs("vm-a2", "SECRET-A2")); err != nil {
		t.Fatal(err)
	}
	if _, body := get(tb.vmA, "/latest/meta-data/instance-id", nil); body != "vm-a2" || s.Port("vm-a") != port {
		t.Errorf("after re-register: %q port %d (was %d)", body, s.Port("vm-a"), port)
	}
	// A device belongs to one VM.
	if err := s.Register("vm-c", []string{"tapa"}, docs("vm-c", "")); err == nil {
		t.Errorf("vm-c registered vm-a's device")
	}

	// Unregistered, vm-a gets nothing; vm-b still works.
	if err := s.Unregister("vm-a"); err != nil {
		t.Fatal(err)
	}
	if st, body, err := request(tb.vmA, "", mdsEndpoint, "GET", "/latest/meta-data/instance-id", nil); err == nil {
		t.Errorf("unregistered vm-a answered: %d %q", st, body)
	}
	if _, body := get(tb.vmB, "/latest/meta-data/instance-id", nil); body != "vm-b" {
		t.Errorf("vm-b after vm-a left: %q", body)
	}

	// Close removes the tables.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r := tb.host.Run("nft", "list", "ruleset"); strings.Contains(r, TableName) {
		t.Errorf("tables left after Close:\n%s", r)
	}
}

// TestNewReplacesStaleTables: rules a previous process left are dropped.
func TestNewReplacesStaleTables(t *testing.T) {
	h := testenv.NewNetNS(t, "lmmds")
	h.Run("nft", "add", "table", "ip", TableName)
	h.Run("nft", "add", "chain", "ip", TableName, "stale")
	var s *Server
	var err error
	h.Do(func() { s, err = New(Options{}) })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := h.Run("nft", "list", "ruleset")
	if strings.Contains(r, "stale") || !strings.Contains(r, "table bridge "+TableName) || !strings.Contains(r, "table ip "+TableName) {
		t.Errorf("ruleset after New:\n%s", r)
	}
}

// TestWithoutBridgeNetfilter: the marks and redirects work whether bridged
// IPv4 goes through the IP hooks (br_netfilter's bridge-nf-call-iptables,
// on by default here) or not, as on hosts without br_netfilter.
func TestWithoutBridgeNetfilter(t *testing.T) {
	tb := newTestbed(t)
	const knob = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	if _, err := os.Stat(knob); err != nil {
		t.Skipf("SKIPPED: no br_netfilter here (%v): the default run already has it off", err)
	}
	tb.host.Run("sysctl", "-w", "net.bridge.bridge-nf-call-iptables=0")
	if v := strings.TrimSpace(tb.host.Run("cat", knob)); v != "0" {
		t.Fatalf("bridge-nf-call-iptables = %s in the host namespace", v)
	}
	var s *Server
	var err error
	tb.host.Do(func() { s, err = New(Options{}) })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for uid, dev := range map[string]string{"vm-a": "tapa", "vm-b": "tapb"} {
		if err := s.Register(uid, []string{dev}, docs(uid, "")); err != nil {
			t.Fatal(err)
		}
	}
	for v, want := range map[*testenv.NetNS]string{tb.vmA: "vm-a", tb.vmB: "vm-b"} {
		if st, body, err := request(v, "", mdsEndpoint, "GET", "/latest/meta-data/instance-id", nil); err != nil || body != want {
			t.Errorf("%s: %d %q %v", want, st, body, err)
		}
	}
	if st, body, err := request(tb.vmA, "", net.JoinHostPort("10.9.0.1", strconv.Itoa(s.Port("vm-b"))), "GET", "/latest/user-data", nil); err == nil {
		t.Errorf("vm-a reached vm-b's listener: %d %q", st, body)
	}
}

// Options.Address moves the service: VMs reach it there, and nothing
// answers at the default address.
func TestCustomAddress(t *testing.T) {
	if _, err := New(Options{Address: netip.MustParseAddrPort("[fd00::1]:80")}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("IPv6 address: %v, want invalid argument", err)
	}
	tb := newTestbed(t)
	addr := netip.MustParseAddrPort("169.254.170.2:8775")
	var s *Server
	var err error
	tb.host.Do(func() { s, err = New(Options{Address: addr}) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.Register("vm-a", []string{"tapa"}, docs("vm-a", "SECRET-A")); err != nil {
		t.Fatal(err)
	}
	if st, body, err := request(tb.vmA, "", addr.String(), "GET", "/latest/meta-data/instance-id", nil); err != nil || st != 200 || body != "vm-a" {
		t.Fatalf("at %s: %d %q %v", addr, st, body, err)
	}
	if st, body, err := request(tb.vmA, "", mdsEndpoint, "GET", "/latest/meta-data/instance-id", nil); err == nil {
		t.Fatalf("the default address answered: %d %q", st, body)
	}
}
