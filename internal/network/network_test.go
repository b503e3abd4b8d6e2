package network

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// inNewNetns moves the test's goroutine, locked to its OS thread, into a
// fresh network namespace for the rest of the test. The thread is never
// unlocked, so Go ends it with the test instead of reusing it; the
// namespace and every device in it go away with the last reference.
// Everything netlink does from this goroutine happens in that namespace,
// TAP creation through /dev/net/tun included; other goroutines (t.Run
// subtests too) stay in the host's namespace, so the tests use none.
func inNewNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: creating network namespaces and devices needs root")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("current netns: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("restore netns: %v", err)
		}
		ns.Close()
		orig.Close()
	})
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
}

func addBridge(t *testing.T, name string) netlink.Link {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("add bridge %s: %v", name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// addParent adds a veth pair and returns the end named name, up. (This
// kernel has no dummy driver; a veth end is as good a macvtap parent.)
func addParent(t *testing.T, name string) netlink.Link {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

func linkNames(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

func tapIface() *types.NetworkInterface {
	return &types.NetworkInterface{DeviceId: "eth0", Type: types.NetworkInterface_TAP}
}

func TestNamesAndMACs(t *testing.T) {
	uids := []string{"01JD6X0Q6Y4M3T6R0C9P2N5K7W", "01JD6X0Q6Y4M3T6R0C9P2N5K7X", "x"}
	seen := map[string]bool{}
	macs := map[string]bool{}
	for _, uid := range uids {
		for _, idx := range []int{0, 1, 9, 10, 99, 1000, MaxInterfaces - 1} {
			for _, mv := range []bool{false, true} {
				n := DeviceName(uid, idx, mv)
				if len(n) > 15 {
					t.Errorf("DeviceName(%q, %d, %v) = %q: %d bytes, over IFNAMSIZ-1", uid, idx, mv, n, len(n))
				}
				if n != DeviceName(uid, idx, mv) {
					t.Errorf("DeviceName(%q, %d, %v) not stable", uid, idx, mv)
				}
				if !IsDeviceName(n) || !strings.HasPrefix(n, NamePrefix(uid)) {
					t.Errorf("%q not recognised as ours / not under %q", n, NamePrefix(uid))
				}
				if seen[n] {
					t.Errorf("name %q produced twice", n)
				}
				seen[n] = true
			}
			mac := GuestMAC(uid, idx)
			hw, err := net.ParseMAC(mac)
			if err != nil || len(hw) != 6 {
				t.Fatalf("GuestMAC(%q, %d) = %q: %v", uid, idx, mac, err)
			}
			if hw[0]&0x02 == 0 || hw[0]&0x01 != 0 {
				t.Errorf("GuestMAC(%q, %d) = %s is not locally administered unicast", uid, idx, mac)
			}
			if mac != GuestMAC(uid, idx) {
				t.Errorf("GuestMAC(%q, %d) not stable", uid, idx)
			}
			if macs[mac] {
				t.Errorf("MAC %s produced twice", mac)
			}
			macs[mac] = true
		}
	}
	for _, n := range []string{"eth0", "fl", "flabcdefghz0", "flabcdefght01", "flabcdefght12345", "flABCDEFGHt0"} {
		if IsDeviceName(n) {
			t.Errorf("IsDeviceName(%q) = true", n)
		}
	}
}

func TestEnsureTap(t *testing.T) {
	inNewNetns(t)
	ctx := context.Background()
	br := addBridge(t, "brtest0")
	br2 := addBridge(t, "brtest1")
	m := New(Options{DefaultBridge: "brtest0"})
	uid := "01JD6X0Q6Y4M3T6R0C9P2N5K7W"

	dev, err := m.Ensure(ctx, uid, 0, tapIface())
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if dev.Name != DeviceName(uid, 0, false) || dev.MacVTap || dev.MAC != GuestMAC(uid, 0) {
		t.Errorf("device = %+v, want name %s, TAP, MAC %s", dev, DeviceName(uid, 0, false), GuestMAC(uid, 0))
	}
	checkTap := func(t *testing.T, name string, wantIndex int, bridge netlink.Link) {
		t.Helper()
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatalf("TAP %s: %v", name, err)
		}
		tap, ok := l.(*netlink.Tuntap)
		if !ok {
			t.Fatalf("%s is a %s, want tuntap", name, l.Type())
		}
		if tap.Mode != netlink.TUNTAP_MODE_TAP || tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 || tap.NonPersist {
			t.Errorf("%s: mode %v flags %#x non-persist %v; want persistent single-queue TAP", name, tap.Mode, tap.Flags, tap.NonPersist)
		}
		if l.Attrs().Index != wantIndex {
			t.Errorf("%s index %d, want %d", name, l.Attrs().Index, wantIndex)
		}
		if l.Attrs().MasterIndex != bridge.Attrs().Index {
			t.Errorf("%s master index %d, want bridge %s (%d)", name, l.Attrs().MasterIndex, bridge.Attrs().Name, bridge.Attrs().Index)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s is down", name)
		}
	}
	checkTap(t, dev.Name, dev.Index, br)

	// Idempotent: same device.
	again, err := m.Ensure(ctx, uid, 0, tapIface())
	if err != nil {
		t.Fatal(err)
	}
	if again != dev {
		t.Errorf("second Ensure = %+v, want %+v", again, dev)
	}

	// A TAP that lost its bridge and went down is put back, not recreated.
	l, _ := netlink.LinkByName(dev.Name)
	if err := netlink.LinkSetNoMaster(l); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Ensure(ctx, uid, 0, tapIface()); err != nil {
		t.Fatal(err)
	}
	checkTap(t, dev.Name, dev.Index, br)

	// The bridge override and a given guest MAC.
	iface := &types.NetworkInterface{
		DeviceId: "eth1", Type: types.NetworkInterface_TAP, GuestMac: proto.String("02:AA:BB:CC:DD:EE"),
		Overrides: &types.NetworkOverrides{BridgeName: proto.String("brtest1")},
	}
	dev1, err := m.Ensure(ctx, uid, 1, iface)
	if err != nil {
		t.Fatal(err)
	}
	if dev1.MAC != "02:aa:bb:cc:dd:ee" {
		t.Errorf("MAC = %s, want the spec's 02:aa:bb:cc:dd:ee", dev1.MAC)
	}
	checkTap(t, DeviceName(uid, 1, false), dev1.Index, br2)
}

func TestEnsureTapPreconditions(t *testing.T) {
	inNewNetns(t)
	ctx := context.Background()
	addParent(t, "notbr0")
	uid := "01JD6X0Q6Y4M3T6R0C9P2N5K7W"
	before := linkNames(t)

	cases := []struct {
		name    string
		m       *Manager
		iface   *types.NetworkInterface
		wantMsg string
	}{
		{"missing default bridge", New(Options{DefaultBridge: "nope0"}), tapIface(), `bridge "nope0" not found`},
		{"missing override bridge", New(Options{DefaultBridge: "nope0"}), &types.NetworkInterface{
			Type: types.NetworkInterface_TAP, Overrides: &types.NetworkOverrides{BridgeName: proto.String("nope1")},
		}, `bridge "nope1" not found`},
		{"no bridge configured", New(Options{}), tapIface(), "no bridge"},
		{"not a bridge", New(Options{DefaultBridge: "notbr0"}), tapIface(), "not a bridge"},
		{"missing macvtap parent", New(Options{ParentInterface: "nope2"}), &types.NetworkInterface{Type: types.NetworkInterface_MACVTAP}, `parent interface "nope2" not found`},
		{"no macvtap parent configured", New(Options{}), &types.NetworkInterface{Type: types.NetworkInterface_MACVTAP}, "no parent interface"},
	}
	// No t.Run: subtests run on other goroutines, outside the namespace.
	for _, c := range cases {
		_, err := c.m.Ensure(ctx, uid, 0, c.iface)
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), c.wantMsg) {
			t.Errorf("%s: err = %v, want FailedPrecondition with %q", c.name, err, c.wantMsg)
		}
		// Check reports the same, up front.
		if err := c.m.Check([]*types.NetworkInterface{c.iface}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("%s: Check = %v, want FailedPrecondition", c.name, err)
		}
	}
	if after := linkNames(t); !slices.Equal(before, after) {
		t.Errorf("failed Ensure calls changed the links: before %q, after %q", before, after)
	}
}

func TestCheck(t *testing.T) {
	inNewNetns(t)
	addBridge(t, "brtest0")
	addParent(t, "par0")
	m := New(Options{DefaultBridge: "brtest0", ParentInterface: "par0"})
	before := linkNames(t)

	ok := []*types.NetworkInterface{
		{Type: types.NetworkInterface_TAP, GuestMac: proto.String("02:00:00:00:00:01")},
		{Type: types.NetworkInterface_MACVTAP, GuestMac: proto.String("02:00:00:00:00:02")},
		{Type: types.NetworkInterface_TAP},
	}
	if err := m.Check(ok); err != nil {
		t.Errorf("Check(valid) = %v", err)
	}
	dup := []*types.NetworkInterface{
		{Type: types.NetworkInterface_TAP, GuestMac: proto.String("02:00:00:00:00:01")},
		{Type: types.NetworkInterface_MACVTAP, GuestMac: proto.String("02:00:00:00:00:01")},
	}
	if err := m.Check(dup); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "already used") {
		t.Errorf("Check(duplicate MAC) = %v, want InvalidArgument", err)
	}
	for _, bad := range []string{"01:00:00:00:00:01", "zz", "02:00:00:00:00:00:00:01"} {
		err := m.Check([]*types.NetworkInterface{{Type: types.NetworkInterface_TAP, GuestMac: proto.String(bad)}})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Check(MAC %s) = %v, want InvalidArgument", bad, err)
		}
	}
	// Every problem is reported.
	err := m.Check([]*types.NetworkInterface{
		{Type: types.NetworkInterface_TAP, Overrides: &types.NetworkOverrides{BridgeName: proto.String("nope0")}},
		{Type: types.NetworkInterface_TAP, GuestMac: proto.String("zz")},
	})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Check(two problems) = %v, want both kinds", err)
	}
	if after := linkNames(t); !slices.Equal(before, after) {
		t.Errorf("Check changed the links: before %q, after %q", before, after)
	}
}

// macvtapMajor is the character device major of macvtap from /proc/devices.
func macvtapMajor(t *testing.T) uint32 {
	t.Helper()
	b, err := os.ReadFile("/proc/devices")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == "macvtap" {
			n, err := strconv.ParseUint(f[0], 10, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(n)
		}
	}
	t.Fatal("no macvtap character device in /proc/devices")
	return 0
}

// checkTapNode asserts /dev/tap<idx> is the character device of the
// macvtap link name (as /sys/dev/char, which lists devices of every network
// namespace, says).
func checkTapNode(t *testing.T, name string, idx int) {
	t.Helper()
	path := "/dev/tap" + strconv.Itoa(idx)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		t.Fatalf("%s is not a character device (mode %o)", path, st.Mode)
	}
	if maj := unix.Major(st.Rdev); maj != macvtapMajor(t) {
		t.Errorf("%s major %d, want macvtap's %d", path, maj, macvtapMajor(t))
	}
	target, err := os.Readlink(filepath.Join("/sys/dev/char", strconv.Itoa(int(unix.Major(st.Rdev)))+":"+strconv.Itoa(int(unix.Minor(st.Rdev)))))
	if err != nil {
		t.Fatalf("sysfs entry of %s: %v", path, err)
	}
	if want := "/net/" + name + "/macvtap/tap" + strconv.Itoa(idx); !strings.HasSuffix(target, want) {
		t.Errorf("%s is %s, want the device of %s", path, target, want)
	}
}

func TestEnsureMacvtap(t *testing.T) {
	inNewNetns(t)
	ctx := context.Background()
	parent := addParent(t, "par0")
	m := New(Options{ParentInterface: "par0"})
	uid := "01JD6X0Q6Y4M3T6R0C9P2N5K7W"
	iface := &types.NetworkInterface{DeviceId: "eth0", Type: types.NetworkInterface_MACVTAP}

	dev, err := m.Ensure(ctx, uid, 0, iface)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	t.Cleanup(func() { _ = m.Remove(context.Background(), uid, 2) })
	if !dev.MacVTap || dev.Name != DeviceName(uid, 0, true) || dev.MAC != GuestMAC(uid, 0) {
		t.Errorf("device = %+v, want macvtap %s with MAC %s", dev, DeviceName(uid, 0, true), GuestMAC(uid, 0))
	}
	l, err := netlink.LinkByName(dev.Name)
	if err != nil {
		t.Fatal(err)
	}
	mv, ok := l.(*netlink.Macvtap)
	if !ok {
		t.Fatalf("%s is a %s, want macvtap", dev.Name, l.Type())
	}
	if mv.ParentIndex != parent.Attrs().Index || mv.Mode != netlink.MACVLAN_MODE_BRIDGE {
		t.Errorf("macvtap parent %d mode %v, want parent %d bridge mode", mv.ParentIndex, mv.Mode, parent.Attrs().Index)
	}
	if mv.HardwareAddr.String() != dev.MAC {
		t.Errorf("macvtap MAC %s, want %s", mv.HardwareAddr, dev.MAC)
	}
	if l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().Index != dev.Index {
		t.Errorf("macvtap up=%v index %d, want up, index %d", l.Attrs().Flags&net.FlagUp != 0, l.Attrs().Index, dev.Index)
	}
	// devtmpfs created /dev/tapN when the link appeared.
	checkTapNode(t, dev.Name, dev.Index)

	again, err := m.Ensure(ctx, uid, 0, iface)
	if err != nil || again != dev {
		t.Errorf("second Ensure = %+v, %v; want %+v", again, err, dev)
	}

	// Without devtmpfs' node, Ensure creates it from sysfs; Remove deletes
	// that node with the link.
	node := "/dev/tap" + strconv.Itoa(dev.Index)
	if err := os.Remove(node); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Ensure(ctx, uid, 0, iface); err != nil {
		t.Fatal(err)
	}
	checkTapNode(t, dev.Name, dev.Index)

	// A given MAC is used; a changed MAC recreates the device.
	iface.GuestMac = proto.String("02:12:34:56:78:9a")
	dev2, err := m.Ensure(ctx, uid, 0, iface)
	if err != nil {
		t.Fatal(err)
	}
	if dev2.MAC != "02:12:34:56:78:9a" {
		t.Errorf("MAC = %s, want the spec's", dev2.MAC)
	}
	l, err = netlink.LinkByName(dev2.Name)
	if err != nil || l.Attrs().HardwareAddr.String() != "02:12:34:56:78:9a" {
		t.Errorf("macvtap after MAC change: %v, %v", l, err)
	}
	if _, err := os.Stat(node); dev2.Index != dev.Index && err == nil {
		t.Errorf("the old node %s was left behind", node)
	}
	checkTapNode(t, dev2.Name, dev2.Index)

	if err := m.Remove(ctx, uid, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(dev2.Name); err == nil {
		t.Errorf("%s still exists after Remove", dev2.Name)
	}
	if _, err := os.Stat("/dev/tap" + strconv.Itoa(dev2.Index)); err == nil {
		t.Errorf("/dev/tap%d still exists after Remove", dev2.Index)
	}
}

func TestRemoveAndOrphans(t *testing.T) {
	inNewNetns(t)
	ctx := context.Background()
	addBridge(t, "brtest0")
	addParent(t, "par0")
	m := New(Options{DefaultBridge: "brtest0", ParentInterface: "par0"})
	a, b := "01JD6X0Q6Y4M3T6R0C9P2N5K7A", "01JD6X0Q6Y4M3T6R0C9P2N5K7B"

	ensure := func(uid string, idx int, typ types.NetworkInterface_IfaceType) Device {
		t.Helper()
		d, err := m.Ensure(ctx, uid, idx, &types.NetworkInterface{Type: typ})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	ensure(a, 0, types.NetworkInterface_TAP)
	ensure(a, 1, types.NetworkInterface_TAP)
	mvA := ensure(a, 2, types.NetworkInterface_MACVTAP)
	ensure(a, 7, types.NetworkInterface_TAP) // beyond the count given to Remove
	tb := ensure(b, 0, types.NetworkInterface_TAP)
	t.Cleanup(func() { _ = m.Remove(context.Background(), a, 8); _ = m.Remove(context.Background(), b, 1) })

	ownedA, err := m.Owned(a)
	if err != nil {
		t.Fatal(err)
	}
	wantA := []string{DeviceName(a, 0, false), DeviceName(a, 1, false), DeviceName(a, 2, true), DeviceName(a, 7, false)}
	slices.Sort(wantA)
	if !slices.Equal(ownedA, wantA) {
		t.Errorf("Owned(a) = %q, want %q", ownedA, wantA)
	}
	orphans, err := m.ListOrphans([]string{b})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(orphans, wantA) {
		t.Errorf("ListOrphans([b]) = %q, want a's devices %q", orphans, wantA)
	}

	if err := m.Remove(ctx, a, 3); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, n := range wantA {
		if _, err := netlink.LinkByName(n); err == nil {
			t.Errorf("%s survived Remove", n)
		}
	}
	if _, err := os.Stat("/dev/tap" + strconv.Itoa(mvA.Index)); err == nil {
		t.Errorf("/dev/tap%d survived Remove", mvA.Index)
	}
	if _, err := netlink.LinkByName(tb.Name); err != nil {
		t.Errorf("other VM's %s removed: %v", tb.Name, err)
	}
	if err := m.Remove(ctx, a, 3); err != nil {
		t.Errorf("second Remove = %v, want nil (idempotent)", err)
	}

	// b is an orphan once no VM knows it.
	removed, err := m.RemoveOrphans(ctx, []string{a})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{tb.Name}) {
		t.Errorf("RemoveOrphans = %q, want [%s]", removed, tb.Name)
	}
	if owned, _ := m.Owned(b); len(owned) != 0 {
		t.Errorf("Owned(b) after RemoveOrphans = %q", owned)
	}
	// Only our devices were touched.
	for _, n := range []string{"lo", "brtest0", "par0", "par0p"} {
		if _, err := netlink.LinkByName(n); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}

func TestEnsureRejectsBadInput(t *testing.T) {
	m := New(Options{DefaultBridge: "br0"})
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"no uid":       func() error { _, err := m.Ensure(ctx, "", 0, tapIface()); return err },
		"nil iface":    func() error { _, err := m.Ensure(ctx, "u", 0, nil); return err },
		"index < 0":    func() error { _, err := m.Ensure(ctx, "u", -1, tapIface()); return err },
		"index >= max": func() error { _, err := m.Ensure(ctx, "u", MaxInterfaces, tapIface()); return err },
		"bad MAC": func() error {
			_, err := m.Ensure(ctx, "u", 0, &types.NetworkInterface{Type: types.NetworkInterface_TAP, GuestMac: proto.String("ff:ff:ff:ff:ff:ff")})
			return err
		},
		"remove no uid": func() error { return m.Remove(ctx, "", 1) },
	} {
		if err := call(); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want InvalidArgument", name, err)
		}
	}
}
