// Package network owns the host side of microVM network interfaces: a TAP
// device attached to a bridge, or a macvtap device on a parent interface,
// one per interface of the spec. Devices are created with netlink in the
// network namespace of the calling thread (the host's, for flintlockd) and
// named from the VM's uid and the interface index (see DeviceName), so that
// the store alone is enough to find them again after a crash.
package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Options configures a Manager.
type Options struct {
	// DefaultBridge is the bridge TAP devices join when the interface has no
	// overrides.bridge_name.
	DefaultBridge string
	// ParentInterface is the host interface macvtap devices sit on.
	ParentInterface string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Manager creates and removes the host devices of VM interfaces.
type Manager struct {
	opts Options
	log  *slog.Logger
}

// New returns a Manager. It checks nothing: use Check for preconditions.
func New(opts Options) *Manager {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Manager{opts: opts, log: log.With("component", "network")}
}

// Device is the host device of one VM interface.
type Device struct {
	// Name is the host link name.
	Name string
	// Index is the host link index; for a macvtap the VMM opens
	// /dev/tap<Index>.
	Index int
	// MAC is the guest's MAC address (the spec's, or GuestMAC). For a
	// macvtap it is also the device's own address.
	MAC string
	// MacVTap is true for a macvtap device, false for a TAP.
	MacVTap bool
}

// Ensure makes the host device of interface index of the VM uid exist,
// attached and up, and returns it. It is idempotent: a device that already
// exists with the right kind and attachment is returned as is (a TAP that
// lost its bridge or went down is put back). Preconditions (bridge, parent
// interface) are checked before anything is created and fail with
// errdefs.ErrFailedPrecondition.
func (m *Manager) Ensure(ctx context.Context, uid string, index int, iface *types.NetworkInterface) (Device, error) {
	if err := ctx.Err(); err != nil {
		return Device{}, err
	}
	if uid == "" || iface == nil {
		return Device{}, fmt.Errorf("network: uid and interface are required: %w", errdefs.ErrInvalidArgument)
	}
	if index < 0 || index >= MaxInterfaces {
		return Device{}, fmt.Errorf("network: interface index %d out of range [0,%d): %w", index, MaxInterfaces, errdefs.ErrInvalidArgument)
	}
	mac, err := m.guestMAC(uid, index, iface)
	if err != nil {
		return Device{}, err
	}
	switch iface.GetType() {
	case types.NetworkInterface_TAP:
		return m.ensureTap(DeviceName(uid, index, false), m.bridgeFor(iface), mac)
	case types.NetworkInterface_MACVTAP:
		return m.ensureMacvtap(DeviceName(uid, index, true), mac)
	default:
		return Device{}, fmt.Errorf("network: unknown interface type %v: %w", iface.GetType(), errdefs.ErrInvalidArgument)
	}
}

func (m *Manager) guestMAC(uid string, index int, iface *types.NetworkInterface) (net.HardwareAddr, error) {
	s := iface.GetGuestMac()
	if s == "" {
		s = GuestMAC(uid, index)
	}
	mac, err := parseGuestMAC(s)
	if err != nil {
		return nil, fmt.Errorf("network: interface %d: %v: %w", index, err, errdefs.ErrInvalidArgument)
	}
	return mac, nil
}

func (m *Manager) bridgeFor(iface *types.NetworkInterface) string {
	if b := iface.GetOverrides().GetBridgeName(); b != "" {
		return b
	}
	return m.opts.DefaultBridge
}

// lookupBridge returns the bridge named name, or a FailedPrecondition error.
func lookupBridge(name string) (netlink.Link, error) {
	if name == "" {
		return nil, fmt.Errorf("network: no bridge for TAP interface (no bridge_name override and no default bridge): %w", errdefs.ErrFailedPrecondition)
	}
	br, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("network: bridge %q not found: %w", name, errdefs.ErrFailedPrecondition)
		}
		return nil, fmt.Errorf("network: looking up bridge %q: %w", name, err)
	}
	if br.Type() != "bridge" {
		return nil, fmt.Errorf("network: %q is a %s, not a bridge: %w", name, br.Type(), errdefs.ErrFailedPrecondition)
	}
	return br, nil
}

// lookupParent returns the macvtap parent interface, or a
// FailedPrecondition error.
func (m *Manager) lookupParent() (netlink.Link, error) {
	name := m.opts.ParentInterface
	if name == "" {
		return nil, fmt.Errorf("network: no parent interface configured for macvtap: %w", errdefs.ErrFailedPrecondition)
	}
	p, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("network: parent interface %q not found: %w", name, errdefs.ErrFailedPrecondition)
		}
		return nil, fmt.Errorf("network: looking up parent interface %q: %w", name, err)
	}
	return p, nil
}

func (m *Manager) ensureTap(name, bridge string, mac net.HardwareAddr) (dev Device, err error) {
	br, err := lookupBridge(bridge)
	if err != nil {
		return Device{}, err
	}
	link, err := existing(name)
	if err != nil {
		return Device{}, err
	}
	if link != nil && !isPlainTap(link) {
		m.log.Warn("replacing device that is not a single-queue TAP", "name", name, "type", link.Type())
		if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
			return Device{}, fmt.Errorf("network: deleting %s: %w", name, err)
		}
		link = nil
	}
	if link == nil {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// One queue, no packet info, virtio-net headers (what the
			// VMMs ask for; a VMM attaching sets its own flags anyway, but
			// the multi-queue flag must match). TUN_EXCL fails if a
			// concurrent create got there first. Persistent (NonPersist
			// false), owner and group root (0).
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_TUN_EXCL,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return Device{}, fmt.Errorf("network: creating TAP %s: %w", name, err)
		}
		m.log.Info("created TAP", "name", name, "bridge", bridge)
		defer func() {
			if err != nil {
				m.deleteQuietly(name)
			}
		}()
		if link, err = netlink.LinkByName(name); err != nil {
			return Device{}, fmt.Errorf("network: TAP %s after create: %w", name, err)
		}
	}

	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return Device{}, fmt.Errorf("network: attaching %s to bridge %q: %w", name, bridge, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return Device{}, fmt.Errorf("network: setting %s up: %w", name, err)
		}
	}
	// Verify what the kernel now reports.
	link, err = netlink.LinkByName(name)
	if err != nil {
		return Device{}, fmt.Errorf("network: TAP %s: %w", name, err)
	}
	if link.Attrs().MasterIndex != br.Attrs().Index || link.Attrs().Flags&net.FlagUp == 0 {
		return Device{}, fmt.Errorf("network: TAP %s is not up on bridge %q after setup", name, bridge)
	}
	return Device{Name: name, Index: link.Attrs().Index, MAC: mac.String()}, nil
}

// isPlainTap: a TAP (not TUN) without multi-queue.
func isPlainTap(l netlink.Link) bool {
	t, ok := l.(*netlink.Tuntap)
	return ok && t.Mode == netlink.TUNTAP_MODE_TAP && t.Flags&netlink.TUNTAP_MULTI_QUEUE == 0
}

func (m *Manager) ensureMacvtap(name string, mac net.HardwareAddr) (dev Device, err error) {
	parent, err := m.lookupParent()
	if err != nil {
		return Device{}, err
	}
	link, err := existing(name)
	if err != nil {
		return Device{}, err
	}
	if link != nil {
		mv, ok := link.(*netlink.Macvtap)
		if !ok || mv.ParentIndex != parent.Attrs().Index || mv.Mode != netlink.MACVLAN_MODE_BRIDGE ||
			!bytes.Equal(mv.HardwareAddr, mac) {
			m.log.Warn("replacing macvtap with the wrong kind, parent, mode or MAC", "name", name, "type", link.Type())
			if err := m.removeLink(link); err != nil {
				return Device{}, err
			}
			link = nil
		}
	}
	if link == nil {
		mv := &netlink.Macvtap{Macvlan: netlink.Macvlan{
			LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: parent.Attrs().Index, HardwareAddr: mac},
			Mode:      netlink.MACVLAN_MODE_BRIDGE,
		}}
		if err := netlink.LinkAdd(mv); err != nil {
			return Device{}, fmt.Errorf("network: creating macvtap %s on %q: %w", name, m.opts.ParentInterface, err)
		}
		m.log.Info("created macvtap", "name", name, "parent", m.opts.ParentInterface, "mac", mac.String())
		defer func() {
			if err != nil {
				m.deleteQuietly(name)
			}
		}()
		if link, err = netlink.LinkByName(name); err != nil {
			return Device{}, fmt.Errorf("network: macvtap %s after create: %w", name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return Device{}, fmt.Errorf("network: setting %s up: %w", name, err)
		}
	}
	idx := link.Attrs().Index
	if err := m.ensureTapNode(name, idx); err != nil {
		return Device{}, err
	}
	return Device{Name: name, Index: idx, MAC: mac.String(), MacVTap: true}, nil
}

// existing returns the link named name, or nil when there is none.
func existing(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("network: looking up %s: %w", name, err)
	}
	return l, nil
}

func (m *Manager) deleteQuietly(name string) {
	if l, err := netlink.LinkByName(name); err == nil {
		if err := m.removeLink(l); err != nil {
			m.log.Warn("cleanup after failed create", "name", name, "error", err)
		}
	}
}

// removeLink deletes a link, and for a macvtap the /dev/tapN node when the
// kernel's devtmpfs did not remove it (a node this package created).
func (m *Manager) removeLink(l netlink.Link) error {
	name, idx := l.Attrs().Name, l.Attrs().Index
	var node *tapNode
	if _, ok := l.(*netlink.Macvtap); ok {
		if n, err := macvtapNode(name, idx); err == nil {
			node = &n
		}
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("network: deleting %s: %w", name, err)
	}
	m.log.Info("removed device", "name", name)
	if node != nil {
		if err := removeTapNodeIfStale(*node); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes every device of the VM uid: the derived names of its count
// interfaces (both kinds) and any other link carrying the uid's prefix.
// Devices that do not exist are fine, so Remove is idempotent.
func (m *Manager) Remove(ctx context.Context, uid string, count int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if uid == "" {
		return fmt.Errorf("network: uid is required: %w", errdefs.ErrInvalidArgument)
	}
	names, err := m.Owned(uid)
	if err != nil {
		return err
	}
	for i := 0; i < count && i < MaxInterfaces; i++ {
		for _, n := range []string{DeviceName(uid, i, false), DeviceName(uid, i, true)} {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	var errs []error
	for _, n := range names {
		l, err := existing(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if l == nil {
			continue
		}
		if err := m.removeLink(l); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Owned lists the names of the existing devices of the VM uid, sorted.
func (m *Manager) Owned(uid string) ([]string, error) {
	prefix := NamePrefix(uid)
	return listNames(func(name string) bool { return ownedBy(name, prefix) })
}

// ListOrphans lists the existing devices named like ours that belong to
// none of the known VM uids, sorted.
func (m *Manager) ListOrphans(knownUIDs []string) ([]string, error) {
	known := make(map[string]bool, len(knownUIDs))
	for _, u := range knownUIDs {
		known[NamePrefix(u)] = true
	}
	return listNames(func(name string) bool {
		return IsDeviceName(name) && !known[name[:len(namePrefix)+hashLen]]
	})
}

// RemoveOrphans deletes the devices ListOrphans reports and returns their
// names.
func (m *Manager) RemoveOrphans(ctx context.Context, knownUIDs []string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	names, err := m.ListOrphans(knownUIDs)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, n := range names {
		l, err := existing(n)
		if err != nil || l == nil {
			if err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := m.removeLink(l); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, n)
	}
	return removed, errors.Join(errs...)
}

func listNames(keep func(string) bool) ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("network: listing links: %w", err)
	}
	var names []string
	for _, l := range links {
		if n := l.Attrs().Name; keep(n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names, nil
}

// Check verifies, before anything is created, that the interfaces can be
// set up: every TAP's bridge exists (errdefs.ErrFailedPrecondition), the
// macvtap parent exists (ErrFailedPrecondition), and the guest MACs given
// are valid unicast addresses used once (errdefs.ErrInvalidArgument).
// All problems are reported, joined.
func (m *Manager) Check(ifaces []*types.NetworkInterface) error {
	var errs []error
	if len(ifaces) > MaxInterfaces {
		errs = append(errs, fmt.Errorf("network: %d interfaces, at most %d: %w", len(ifaces), MaxInterfaces, errdefs.ErrInvalidArgument))
	}
	macs := map[string]int{}
	parentChecked := false
	for i, iface := range ifaces {
		if iface == nil {
			errs = append(errs, fmt.Errorf("network: interface %d is empty: %w", i, errdefs.ErrInvalidArgument))
			continue
		}
		if s := iface.GetGuestMac(); s != "" {
			mac, err := parseGuestMAC(s)
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("network: interface %d: %v: %w", i, err, errdefs.ErrInvalidArgument))
			default:
				if first, dup := macs[mac.String()]; dup {
					errs = append(errs, fmt.Errorf("network: interface %d: MAC %s already used by interface %d: %w", i, mac, first, errdefs.ErrInvalidArgument))
				} else {
					macs[mac.String()] = i
				}
			}
		}
		switch iface.GetType() {
		case types.NetworkInterface_TAP:
			if _, err := lookupBridge(m.bridgeFor(iface)); err != nil {
				errs = append(errs, fmt.Errorf("interface %d: %w", i, err))
			}
		case types.NetworkInterface_MACVTAP:
			if !parentChecked {
				parentChecked = true
				if _, err := m.lookupParent(); err != nil {
					errs = append(errs, fmt.Errorf("interface %d: %w", i, err))
				}
			}
		default:
			errs = append(errs, fmt.Errorf("network: interface %d: unknown type %v: %w", i, iface.GetType(), errdefs.ErrInvalidArgument))
		}
	}
	return errors.Join(errs...)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}
