package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"

	"github.com/containerd/errdefs"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// links are the host links apply manages, as they are now (nil: absent).
type links struct {
	bridge netlink.Link
	vlan   netlink.Link
	parent netlink.Link
	egress netlink.Link
}

// uplink is the link that joins the bridge to the other hosts: the VLAN
// interface, the parent itself (no VLAN), or none.
func (c *Config) uplinkName() string {
	if c.VLANID != 0 {
		return c.VLANInterface
	}
	return c.ParentInterface
}

// check looks at the host before anything is changed and reports every
// problem (joined): missing interfaces and tools, name clashes, a VM
// subnet that overlaps an address or route the host already has. It
// returns the links it found.
func check(c *Config, r *resolved, st *state, dnsmasqBin string) (*links, error) {
	var pre []string // errdefs.ErrFailedPrecondition
	bad := func(format string, args ...any) { pre = append(pre, fmt.Sprintf(format, args...)) }
	l := &links{}
	var err error

	if st.Bridge != "" && st.Bridge != c.Bridge {
		bad("bridge: this state folder was applied with bridge %q; run teardown before changing it", st.Bridge)
	}
	if st.VLAN != "" && st.VLAN != c.VLANInterface {
		bad("vlan: this state folder was applied with VLAN interface %q; run teardown before changing it", st.VLAN)
	}

	lookup := func(name string) netlink.Link {
		if name == "" {
			return nil
		}
		link, e := netlink.LinkByName(name)
		if e != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(e, &nf) {
				err = errors.Join(err, fmt.Errorf("hostnet: looking up %s: %w", name, e))
			}
			return nil
		}
		return link
	}
	l.bridge = lookup(c.Bridge)
	l.parent = lookup(c.ParentInterface)
	if c.VLANID != 0 {
		l.vlan = lookup(c.VLANInterface)
	}
	if c.NAT != nil {
		l.egress = lookup(c.NAT.EgressInterface)
	}
	if err != nil {
		return nil, err
	}

	if c.ParentInterface != "" && l.parent == nil {
		bad("parentInterface: %q not found on this host", c.ParentInterface)
	}
	if c.NAT != nil && l.egress == nil {
		bad("nat.egressInterface: %q not found on this host", c.NAT.EgressInterface)
	}
	if l.bridge != nil && l.bridge.Type() != "bridge" {
		bad("bridge: %q exists and is a %s, not a bridge", c.Bridge, l.bridge.Type())
	}
	if l.vlan != nil {
		v, ok := l.vlan.(*netlink.Vlan)
		switch {
		case !ok:
			bad("vlanInterface: %q exists and is a %s, not a VLAN", c.VLANInterface, l.vlan.Type())
		case l.parent != nil && (v.ParentIndex != l.parent.Attrs().Index || v.VlanId != c.VLANID):
			bad("vlanInterface: %q exists with VLAN id %d on another parent or id (want %d on %s)",
				c.VLANInterface, v.VlanId, c.VLANID, c.ParentInterface)
		}
	}
	var up netlink.Link
	if c.VLANID != 0 {
		up = l.vlan
	} else {
		up = l.parent
	}
	if up != nil {
		m := up.Attrs().MasterIndex
		if m != 0 && (l.bridge == nil || m != l.bridge.Attrs().Index) {
			bad("%s is already attached to another master (index %d)", up.Attrs().Name, m)
		}
	}
	if c.VLANID == 0 && l.parent != nil {
		addrs, e := netlink.AddrList(l.parent, netlink.FAMILY_V4)
		if e != nil {
			return nil, fmt.Errorf("hostnet: addresses of %s: %w", c.ParentInterface, e)
		}
		if len(addrs) > 0 {
			bad("parentInterface: %s has IPv4 address %s; without vlanID it joins the bridge and must carry no address",
				c.ParentInterface, addrs[0].IPNet)
		}
	}

	// The VM subnet must be new to this host: any address or route that
	// overlaps it, on a link other than the bridge, is an error.
	bridgeIndex := -1
	if l.bridge != nil {
		bridgeIndex = l.bridge.Attrs().Index
	}
	addrs, e := netlink.AddrList(nil, netlink.FAMILY_V4)
	if e != nil {
		return nil, fmt.Errorf("hostnet: listing addresses: %w", e)
	}
	for _, a := range addrs {
		if a.LinkIndex == bridgeIndex {
			continue
		}
		if p, ok := prefixOf(a.IPNet); ok && p.Overlaps(r.subnet) {
			bad("address: the VM subnet %s overlaps address %s already on %s", r.subnet, p, linkName(a.LinkIndex))
		}
	}
	routes, e := netlink.RouteList(nil, netlink.FAMILY_V4)
	if e != nil {
		return nil, fmt.Errorf("hostnet: listing routes: %w", e)
	}
	for _, rt := range routes {
		if rt.LinkIndex == bridgeIndex || rt.Dst == nil {
			continue
		}
		if p, ok := prefixOf(rt.Dst); ok && p.Bits() > 0 && p.Masked().Overlaps(r.subnet) {
			bad("address: the VM subnet %s overlaps route %s on %s", r.subnet, p.Masked(), linkName(rt.LinkIndex))
		}
	}

	if c.DHCP != nil {
		if _, e := exec.LookPath(dnsmasqBin); e != nil {
			bad("dhcp: %s not found (Debian package dnsmasq-base): %v", dnsmasqBin, e)
		}
	}
	conn, e := nftables.New()
	if e == nil {
		_, e = conn.ListTablesOfFamily(nftables.TableFamilyINet)
	}
	if e != nil {
		bad("nftables: not usable here: %v", e)
	}

	if len(pre) > 0 {
		return nil, fmt.Errorf("hostnet: cannot apply: %w", joinKind(pre, errdefs.ErrFailedPrecondition))
	}
	return l, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, _ := n.Mask.Size()
	p := netip.PrefixFrom(a, ones)
	return p, p.IsValid()
}

func linkName(index int) string {
	if l, err := netlink.LinkByIndex(index); err == nil {
		return l.Attrs().Name
	}
	return fmt.Sprintf("link %d", index)
}

func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
