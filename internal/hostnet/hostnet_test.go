package hostnet

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// hostNS is a namespace set up as a host before apply: a parent NIC eth0
// and an uplink wan0 (veth ends whose peers stay in the namespace), up.
func hostNS(t *testing.T) *testenv.NetNS {
	n := testenv.NewNetNS(t, "lmhn")
	n.Run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	n.Run("ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p")
	for _, l := range []string{"eth0", "eth0p", "wan0", "wan0p"} {
		n.Run("ip", "link", "set", l, "up")
	}
	n.Run("ip", "addr", "add", "198.51.100.2/24", "dev", "wan0")
	return n
}

// fullConfig uses every part of the config but the VLAN: this machine's
// kernel has no 802.1Q support, so the parent itself (a veth standing in
// for a VLAN) joins the bridge; TestVLANUplink covers VLANs where the
// kernel has them.
const fullConfig = `
parentInterface: eth0
bridge: lmbr0
address: 10.20.0.1/24
dhcp:
  range: 10.20.0.100-10.20.0.199
  leaseTime: 10m
  dnsServers: [192.0.2.53]
vipRange: 10.20.0.10-10.20.0.19
staticLeases:
- {mac: "02:00:00:00:00:50", ip: 10.20.0.50, hostname: fixed}
nat:
  egressInterface: wan0
managementPorts: [9090, 9091]
`

func parse(t *testing.T, yaml, stateDir string) *Config {
	t.Helper()
	c, err := ParseConfig([]byte("stateDir: " + stateDir + "\n" + yaml))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func apply(t *testing.T, n *testenv.NetNS, c *Config, opts Options) (res *Result, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n.Do(func() { res, err = Apply(ctx, c, opts) })
	return res, err
}

func teardown(t *testing.T, n *testenv.NetNS, c *Config, opts Options) (res *Result, err error) {
	t.Helper()
	n.Do(func() { res, err = Teardown(context.Background(), c, opts) })
	return res, err
}

// TestApplyTwiceAndTeardown applies the full config in a fresh namespace,
// checks each part with the system's own tools, applies again (nothing may
// change) and tears down (the namespace must be as it was).
func TestApplyTwiceAndTeardown(t *testing.T) {
	n := hostNS(t)
	stateDir := filepath.Join(t.TempDir(), "hostnet")
	c := parse(t, fullConfig, stateDir)
	before := n.Snapshot()

	// A dry run lists the steps and changes nothing.
	dry, err := apply(t, n, c, Options{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan:\n  %s", strings.Join(dry.Steps, "\n  "))
	for _, want := range []string{"create bridge lmbr0",
		"attach eth0 to bridge lmbr0", "add address 10.20.0.1/24 to lmbr0", "set sysctl net.ipv4.ip_forward = 1 (was 0)",
		"create nftables table inet liquidmetal", "start dnsmasq on lmbr0 (DHCP 10.20.0.100-10.20.0.199, 1 static leases"} {
		if !containsPrefix(dry.Steps, want) {
			t.Errorf("dry run has no step %q", want)
		}
	}
	if got := n.Snapshot(); got != before {
		t.Fatalf("dry run changed the namespace:\n%s", diff(before, got))
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Fatalf("dry run created the state folder: %v", err)
	}

	res, err := apply(t, n, c, Options{})
	t.Cleanup(func() { _, _ = teardown(t, n, c, Options{}) })
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if len(res.Steps) != len(dry.Steps) {
		t.Errorf("apply made %d steps, the dry run planned %d:\n%v\n%v", len(res.Steps), len(dry.Steps), res.Steps, dry.Steps)
	}

	// What the kernel and dnsmasq now show.
	if up := n.Run("ip", "-d", "link", "show", "eth0"); !regexp.MustCompile(`eth0@eth0p:.*master lmbr0 state UP`).MatchString(up) {
		t.Errorf("eth0 is not on lmbr0:\n%s", up)
	}
	if br := n.Run("ip", "-d", "link", "show", "lmbr0"); !strings.Contains(br, "bridge forward_delay") || !strings.Contains(br, "state UP") {
		t.Errorf("lmbr0 is not an up bridge:\n%s", br)
	}
	if a := n.Run("ip", "-4", "addr", "show", "lmbr0"); !strings.Contains(a, "inet 10.20.0.1/24") {
		t.Errorf("lmbr0 lacks 10.20.0.1/24:\n%s", a)
	}
	if f := strings.TrimSpace(n.Run("cat", "/proc/sys/net/ipv4/ip_forward")); f != "1" {
		t.Errorf("ip_forward = %s", f)
	}
	rules := n.Run("nft", "list", "table", "inet", "liquidmetal")
	for _, want := range []string{
		`iifname "lmbr0" tcp dport 9090 drop comment "liquidmetal: VMs on lmbr0 may not reach management port tcp/9090"`,
		`iifname "lmbr0" tcp dport 9091 drop`,
		`iifname "lmbr0" ip daddr 169.254.0.0/16 drop`,
		`oifname "wan0" ip saddr 10.20.0.0/24 ip daddr != 10.20.0.0/24 masquerade`,
		`type nat hook postrouting priority srcnat; policy accept;`,
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("nft table lacks %q:\n%s", want, rules)
		}
	}
	pid := dnsmasqPID(stateDir)
	if pid == 0 {
		t.Fatalf("dnsmasq is not running")
	}
	if !sameFile(t, "/proc/"+itoa(pid)+"/ns/net", "/run/netns/"+n.Name) {
		t.Errorf("dnsmasq runs outside the namespace")
	}
	conf, _ := os.ReadFile(filepath.Join(stateDir, dnsmasqConf))
	for _, want := range []string{"interface=lmbr0\n", "dhcp-range=10.20.0.100,10.20.0.199,255.255.255.0,10m\n",
		"dhcp-option=option:router,10.20.0.1\n", "dhcp-option=option:dns-server,192.0.2.53\n", "port=0\n",
		"dhcp-host=02:00:00:00:00:50,10.20.0.50,fixed\n"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("dnsmasq.conf lacks %q:\n%s", want, conf)
		}
	}

	// Again: nothing to do, nothing changed, the same dnsmasq.
	applied := n.Snapshot()
	res, err = apply(t, n, c, Options{})
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if len(res.Steps) != 0 {
		t.Errorf("second apply made steps: %v", res.Steps)
	}
	if got := n.Snapshot(); got != applied {
		t.Errorf("second apply changed the namespace:\n%s", diff(applied, got))
	}
	if p := dnsmasqPID(stateDir); p != pid {
		t.Errorf("second apply restarted dnsmasq (%d, was %d)", p, pid)
	}

	// Teardown: back to the start, the state folder (created by apply)
	// and dnsmasq gone.
	dryDown, err := teardown(t, n, c, Options{DryRun: true})
	if err != nil || len(dryDown.Steps) < 6 {
		t.Fatalf("teardown dry run: %v %v", dryDown, err)
	}
	if got := n.Snapshot(); got != applied {
		t.Fatalf("teardown dry run changed the namespace:\n%s", diff(applied, got))
	}
	down, err := teardown(t, n, c, Options{})
	if err != nil {
		t.Fatalf("teardown: %v", err)
	}
	t.Logf("teardown:\n  %s", strings.Join(down.Steps, "\n  "))
	if got := n.Snapshot(); got != before {
		t.Errorf("teardown did not restore the namespace:\n%s", diff(before, got))
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("state folder left: %v", err)
	}
	if running(pid) {
		t.Errorf("dnsmasq %d still running", pid)
	}
	// A second teardown has nothing to do.
	if res, err := teardown(t, n, c, Options{}); err != nil || len(res.Steps) != 0 {
		t.Errorf("second teardown: %v %v", res.Steps, err)
	}
}

// TestTeardownKeepsWhatExisted: a bridge and a parent NIC the operator
// made (the parent down and detached) are used, and teardown leaves them
// as they were, undoing only the attachment (and the bridge MAC it
// changed), the parent's up state, the address and the state that apply
// added.
func TestTeardownKeepsWhatExisted(t *testing.T) {
	n := hostNS(t)
	// The operator's bridge is in use: up, with a port. (The kernel changes
	// a bridge that never had a port in ways no one can undo: carrier,
	// offload sizes.)
	n.Run("ip", "link", "add", "br-ops", "type", "bridge")
	n.Run("ip", "link", "add", "opsport", "type", "veth", "peer", "name", "opspeer")
	n.Run("ip", "link", "set", "opsport", "master", "br-ops")
	for _, l := range []string{"opsport", "opspeer", "br-ops"} {
		n.Run("ip", "link", "set", l, "up")
	}
	n.Run("ip", "link", "set", "eth0", "down")
	for i := 0; !strings.Contains(n.Run("ip", "link", "show", "br-ops"), "state UP"); i++ {
		if i > 100 {
			t.Fatal("br-ops did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stateDir := filepath.Join(t.TempDir(), "st")
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	c := parse(t, "parentInterface: eth0\nbridge: br-ops\naddress: 10.30.0.1/24\n", stateDir)
	before := n.Snapshot()
	res, err := apply(t, n, c, Options{})
	t.Cleanup(func() { _, _ = teardown(t, n, c, Options{}) })
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"attach eth0 to bridge br-ops", "set eth0 up", "add address 10.30.0.1/24 to br-ops", "create nftables table inet liquidmetal"}
	if strings.Join(res.Steps, "\n") != strings.Join(want, "\n")+" (1 rules: input 0, forward 1, postrouting 0)" {
		t.Errorf("apply steps:\n%s\nwant:\n%s", strings.Join(res.Steps, "\n"), strings.Join(want, "\n"))
	}
	if l := n.Run("ip", "link", "show", "eth0"); !strings.Contains(l, "master br-ops state UP") {
		t.Errorf("eth0: %s", l)
	}
	if _, err := teardown(t, n, c, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := n.Snapshot(); got != before {
		t.Errorf("teardown did not restore the namespace:\n%s", diff(before, got))
	}
	if _, err := os.Stat(stateDir); err != nil {
		t.Errorf("teardown removed a state folder it did not create: %v", err)
	}
}

// TestVLANUplink applies a config with a VLAN on the parent, where the
// kernel has 802.1Q; elsewhere it checks that apply says so clearly and
// leaves nothing behind.
func TestVLANUplink(t *testing.T) {
	n := hostNS(t)
	stateDir := filepath.Join(t.TempDir(), "hostnet")
	c := parse(t, "parentInterface: eth0\nvlanID: 100\nbridge: lmbr0\naddress: 10.20.0.1/24\n", stateDir)
	before := n.Snapshot()
	_, probeErr := n.Try("ip", "link", "add", "link", "eth0", "name", "probe.7", "type", "vlan", "id", "7")
	_, err := apply(t, n, c, Options{})
	t.Cleanup(func() { _, _ = teardown(t, n, c, Options{}) })
	if probeErr != nil {
		if err == nil || !strings.Contains(err.Error(), "no 802.1Q VLAN support") {
			t.Errorf("apply without kernel VLAN support: %v", err)
		}
		if got := n.Snapshot(); got != before {
			t.Errorf("failed apply changed the namespace:\n%s", diff(before, got))
		}
		if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
			t.Errorf("failed apply left the state folder")
		}
		t.Skipf("SKIPPED (after checking the error): this kernel has no 802.1Q VLAN support: %v", probeErr)
	}
	n.Run("ip", "link", "del", "probe.7")
	if err != nil {
		t.Fatal(err)
	}
	vlan := n.Run("ip", "-d", "link", "show", "eth0.100")
	for _, re := range []string{`eth0\.100@eth0:.*master lmbr0 state UP`, `vlan protocol 802.1Q id 100`} {
		if !regexp.MustCompile(re).MatchString(vlan) {
			t.Errorf("eth0.100 does not match %q:\n%s", re, vlan)
		}
	}
	if _, err := teardown(t, n, c, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := n.Snapshot(); got != before {
		t.Errorf("teardown did not restore the namespace:\n%s", diff(before, got))
	}
}

// TestApplyConverges: a changed config moves the address and drops NAT
// (restoring ip_forward) and DHCP (stopping dnsmasq).
func TestApplyConverges(t *testing.T) {
	n := hostNS(t)
	stateDir := filepath.Join(t.TempDir(), "hostnet")
	c := parse(t, fullConfig, stateDir)
	before := n.Snapshot()
	if _, err := apply(t, n, c, Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = teardown(t, n, c, Options{}) })
	pid := dnsmasqPID(stateDir)

	c2 := parse(t, "parentInterface: eth0\nbridge: lmbr0\naddress: 10.20.0.2/24\n", stateDir)
	res, err := apply(t, n, c2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"remove address 10.20.0.1/24 from lmbr0", "add address 10.20.0.2/24 to lmbr0",
		"restore sysctl net.ipv4.ip_forward = 0", "replace nftables table inet liquidmetal", "stop dnsmasq"} {
		if !containsPrefix(res.Steps, w) {
			t.Errorf("no step %q: %v", w, res.Steps)
		}
	}
	if a := n.Run("ip", "-4", "-o", "addr", "show", "lmbr0"); strings.Contains(a, "10.20.0.1/") || !strings.Contains(a, "10.20.0.2/24") {
		t.Errorf("addresses: %s", a)
	}
	if running(pid) {
		t.Errorf("dnsmasq still runs")
	}
	if r := n.Run("nft", "list", "table", "inet", "liquidmetal"); strings.Contains(r, "masquerade") || strings.Contains(r, "9090") {
		t.Errorf("old rules left:\n%s", r)
	}
	if _, err := teardown(t, n, c2, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := n.Snapshot(); got != before {
		t.Errorf("teardown did not restore the namespace:\n%s", diff(before, got))
	}
}

// TestBadInput: each error is reported before anything is created.
func TestBadInput(t *testing.T) {
	n := hostNS(t)
	// Something that overlaps 10.20.0.0/24: a route on eth0p.
	n.Run("ip", "route", "add", "10.20.0.128/25", "dev", "eth0p")
	n.Run("ip", "link", "add", "notabr", "type", "veth", "peer", "name", "notabrp")
	n.Run("ip", "link", "add", "otherbr", "type", "bridge")
	n.Run("ip", "link", "set", "wan0p", "master", "otherbr")
	before := n.Snapshot()
	base := strings.Replace(fullConfig, "address: 10.20.0.1/24", "address: 10.40.0.1/24", 1)
	base = strings.NewReplacer("10.20.0.", "10.40.0.").Replace(base)

	cases := []struct {
		name, yaml string
		kind       func(error) bool
		want       string
	}{
		{"missing parent", strings.Replace(base, "parentInterface: eth0", "parentInterface: eth9", 1),
			errdefs.IsFailedPrecondition, `parentInterface: "eth9" not found`},
		{"missing egress", strings.Replace(base, "egressInterface: wan0", "egressInterface: wan9", 1),
			errdefs.IsFailedPrecondition, `nat.egressInterface: "wan9" not found`},
		{"overlapping subnet", strings.NewReplacer("10.40.0.", "10.20.0.").Replace(base),
			errdefs.IsFailedPrecondition, "the VM subnet 10.20.0.0/24 overlaps route 10.20.0.128/25 on eth0p"},
		{"overlapping address", strings.NewReplacer("10.40.0.", "198.51.100.").Replace(base),
			errdefs.IsFailedPrecondition, "overlaps address 198.51.100.2/24 already on wan0"},
		{"bridge name taken", strings.Replace(base, "bridge: lmbr0", "bridge: notabr", 1),
			errdefs.IsFailedPrecondition, `bridge: "notabr" exists and is a veth, not a bridge`},
		{"VIP range inside the DHCP range", strings.Replace(base, "vipRange: 10.40.0.10-10.40.0.19", "vipRange: 10.40.0.150-10.40.0.160", 1),
			errdefs.IsInvalidArgument, "vipRange: 10.40.0.150-10.40.0.160 is inside the DHCP range 10.40.0.100-10.40.0.199"},
		{"duplicate static MAC", strings.Replace(base, "staticLeases:\n", "staticLeases:\n- {mac: \"02:00:00:00:00:50\", ip: 10.40.0.51}\n", 1),
			errdefs.IsInvalidArgument, "staticLeases[1].mac: duplicate MAC 02:00:00:00:00:50"},
		{"static lease in the VIP range", strings.Replace(base, "staticLeases:\n", "staticLeases:\n- {mac: \"02:00:00:00:00:51\", ip: 10.40.0.12}\n", 1),
			errdefs.IsInvalidArgument, "staticLeases[0].ip: 10.40.0.12 is inside the VIP range"},
		{"uplink on another bridge", strings.Replace(base, "parentInterface: eth0", "parentInterface: wan0p", 1),
			errdefs.IsFailedPrecondition, "wan0p is already attached to another master"},
		{"unknown key", base + "bridgeName: x\n", errdefs.IsInvalidArgument, `unknown field "bridgeName"`},
	}
	stateDir := filepath.Join(t.TempDir(), "hostnet")
	for _, tc := range cases {
		c, err := ParseConfig([]byte("stateDir: " + stateDir + "\n" + tc.yaml))
		if err == nil {
			_, err = apply(t, n, c, Options{})
		}
		switch {
		case err == nil:
			t.Errorf("%s: no error", tc.name)
		case !tc.kind(err):
			t.Errorf("%s: wrong error kind: %v", tc.name, err)
		case !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: error %q does not say %q", tc.name, err, tc.want)
		}
		if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
			t.Fatalf("%s: the state folder was created", tc.name)
		}
		if got := n.Snapshot(); got != before {
			t.Fatalf("%s: the namespace changed:\n%s", tc.name, diff(before, got))
		}
	}

	// Several problems at once are all reported.
	_, err := ParseConfig([]byte("bridge: lmbr0\naddress: 10.0.0.1/24\nvlanID: 5000\ndhcp: {range: 10.0.0.9-10.0.0.2}\n"))
	for _, want := range []string{"vlanID: 5000", "a VLAN needs parentInterface", "ends before it starts"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("joined error %v lacks %q", err, want)
		}
	}
}

func containsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// diff shows the lines only in a (-) or only in b (+).
func diff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	in := func(l []string) map[string]int {
		m := map[string]int{}
		for _, s := range l {
			m[s]++
		}
		return m
	}
	am, bm := in(al), in(bl)
	var out []string
	for _, s := range al {
		if bm[s] == 0 {
			out = append(out, "- "+s)
		}
	}
	for _, s := range bl {
		if am[s] == 0 {
			out = append(out, "+ "+s)
		}
	}
	if len(out) == 0 {
		return "(same lines, different order or count)"
	}
	return strings.Join(out, "\n")
}

func itoa(i int) string { return strconv.Itoa(i) }

// sameFile reports whether two paths are the same inode (a namespace file
// and the bind mount "ip netns" keeps of it).
func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		t.Logf("stat: %v %v", err1, err2)
		return false
	}
	return os.SameFile(sa, sb)
}

// running reports whether pid is a live process (not gone, not a zombie
// waiting for init).
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// TestDHCPLeases: a DHCP client (busybox udhcpc) on the bridge gets an
// address from the dynamic range with the router and name server of the
// config, and the MAC of the static lease gets its fixed address.
func TestDHCPLeases(t *testing.T) {
	n := hostNS(t)
	stateDir := filepath.Join(t.TempDir(), "hostnet")
	c := parse(t, fullConfig, stateDir)
	if _, err := apply(t, n, c, Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = teardown(t, n, c, Options{}) })
	script := filepath.Join(t.TempDir(), "udhcpc.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && echo \"LEASE ip=$ip mask=$mask router=$router dns=$dns\"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	lease := func(client, mac string) string {
		cl := testenv.NewNetNS(t, "lmhn")
		n.Run("ip", "link", "add", client, "type", "veth", "peer", "name", "eth0", "netns", cl.Name)
		n.Run("ip", "link", "set", client, "master", "lmbr0", "up")
		cl.Run("ip", "link", "set", "eth0", "address", mac, "up")
		return cl.Run("busybox", "udhcpc", "-i", "eth0", "-q", "-n", "-f", "-t", "10", "-T", "1", "-s", script)
	}
	dyn := lease("vm1", "02:00:00:00:00:99")
	m := regexp.MustCompile(`LEASE ip=10\.20\.0\.(\d+) mask=24 router=10\.20\.0\.1 dns=192\.0\.2\.53`).FindStringSubmatch(dyn)
	if m == nil {
		t.Fatalf("no lease from the dynamic range:\n%s", dyn)
	}
	if last, _ := strconv.Atoi(m[1]); last < 100 || last > 199 {
		t.Errorf("leased 10.20.0.%d, outside 10.20.0.100-199", last)
	}
	if fixed := lease("vm2", "02:00:00:00:00:50"); !strings.Contains(fixed, "LEASE ip=10.20.0.50 mask=24 router=10.20.0.1") {
		t.Errorf("the static lease was not given:\n%s", fixed)
	}
	leases, _ := os.ReadFile(filepath.Join(stateDir, dnsmasqLeases))
	if !strings.Contains(string(leases), "02:00:00:00:00:99 10.20.0."+m[1]) || !strings.Contains(string(leases), "02:00:00:00:00:50 10.20.0.50 fixed") {
		t.Errorf("lease file:\n%s", leases)
	}
}
