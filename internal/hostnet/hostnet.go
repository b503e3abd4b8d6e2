// Package hostnet owns the host side of the VM network that flintlockd's
// TAP devices join: from a small config (see Config) it sets up, in the
// network namespace of the calling thread,
//
//   - a VLAN interface on a parent NIC (or the parent itself) as the uplink
//     that carries the VM subnet to the other hosts;
//   - the bridge the VMs' TAPs attach to, with this host's address on it;
//   - dnsmasq serving DHCP for the subnet from a dynamic range, with static
//     leases, never leasing the reserved VIP range;
//   - the nftables table "inet liquidmetal": masquerade for VM egress, and
//     filters that keep VMs from the host's management ports and keep
//     link-local (metadata) traffic from being forwarded;
//   - IPv4 forwarding when NAT is on.
//
// Apply is idempotent: it compares what exists with what the config wants
// and changes only the difference (a second run changes nothing). Every
// change it makes is recorded in the state folder, and Teardown undoes
// exactly those, in reverse order, leaving what existed before. The host
// is checked before anything is changed: a missing parent or egress
// interface, a name clash, a VM subnet overlapping an address or route the
// host has, or an invalid config (VIPs inside the DHCP range, a duplicate
// static MAC...) are errors, all reported at once.
package hostnet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// Options change how Apply and Teardown run.
type Options struct {
	// DryRun computes and returns the steps without making any change.
	DryRun bool
	// Dnsmasq is the dnsmasq binary (default "dnsmasq", from PATH).
	Dnsmasq string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (o *Options) dnsmasq() string {
	if o.Dnsmasq != "" {
		return o.Dnsmasq
	}
	return "dnsmasq"
}

func (o *Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger.With("component", "hostnet")
	}
	return slog.Default().With("component", "hostnet")
}

// Result lists the steps that were made (or, with DryRun, would be made),
// in order. No steps means the host already was as wanted.
type Result struct {
	Steps []string
}

// step is one change: its description and the action, which updates the
// state with what it did.
type step struct {
	desc string
	do   func(st *state) error
}

// sysctlForward is the sysctl NAT needs.
const sysctlForward = "net/ipv4/ip_forward"

// Apply makes the host network match the config. See the package comment.
func Apply(ctx context.Context, c *Config, opts Options) (*Result, error) {
	r, err := c.resolve()
	if err != nil {
		return nil, err
	}
	st, err := readState(c.StateDir)
	if err != nil {
		return nil, err
	}
	steps, err := plan(ctx, c, r, st, &opts)
	if err != nil {
		return nil, err
	}
	res := &Result{}
	if len(steps) == 0 {
		return res, nil
	}
	if opts.DryRun {
		for _, s := range steps {
			res.Steps = append(res.Steps, s.desc)
		}
		return res, nil
	}

	// Changes start here: the state folder first, then, under its lock,
	// a fresh plan (another run may have got there first).
	created, err := ensureDir(c.StateDir)
	if err != nil {
		return nil, err
	}
	unlock, err := lock(c.StateDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if st, err = readState(c.StateDir); err != nil {
		return nil, err
	}
	if created {
		st.add(record{Kind: kindDir, Name: c.StateDir})
	}
	if steps, err = plan(ctx, c, r, st, &opts); err != nil {
		if created {
			unlock()
			_ = os.RemoveAll(c.StateDir)
		}
		return nil, err
	}
	log := opts.logger()
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return res, errors.Join(err, st.write(c.StateDir))
		}
		log.Info("apply", "step", s.desc)
		err := s.do(st)
		if err != nil && created && len(st.Records) == 1 {
			// The first change failed: leave no state folder either.
			unlock()
			_ = os.RemoveAll(c.StateDir)
			return res, fmt.Errorf("%s: %w", s.desc, err)
		}
		if werr := st.write(c.StateDir); werr != nil {
			return res, errors.Join(err, werr)
		}
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.desc, err)
		}
		res.Steps = append(res.Steps, s.desc)
	}
	return res, st.write(c.StateDir)
}

// ensureDir creates dir (and its parents) and reports whether dir itself
// was created.
func ensureDir(dir string) (bool, error) {
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return false, fmt.Errorf("hostnet: state folder: %w", err)
	}
	return true, nil
}

// plan checks the host and lists the steps that take it from what exists
// to what the config wants.
func plan(ctx context.Context, c *Config, r *resolved, st *state, opts *Options) ([]step, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l, err := check(c, r, st, opts.dnsmasq())
	if err != nil {
		return nil, err
	}
	var steps []step
	add := func(desc string, do func(st *state) error) { steps = append(steps, step{desc, do}) }

	// The uplink: a VLAN interface on the parent.
	if c.VLANID != 0 && l.vlan == nil {
		add(fmt.Sprintf("create VLAN interface %s (id %d on %s)", c.VLANInterface, c.VLANID, c.ParentInterface),
			func(st *state) error {
				parent, err := netlink.LinkByName(c.ParentInterface)
				if err != nil {
					return err
				}
				v := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: c.VLANInterface, ParentIndex: parent.Attrs().Index}, VlanId: c.VLANID}
				if err := netlink.LinkAdd(v); err != nil {
					if errors.Is(err, syscall.EOPNOTSUPP) {
						return fmt.Errorf("hostnet: creating VLAN %s: this kernel has no 802.1Q VLAN support (module 8021q): %w", c.VLANInterface, errdefs.ErrFailedPrecondition)
					}
					return fmt.Errorf("hostnet: creating VLAN %s: %w", c.VLANInterface, err)
				}
				st.add(record{Kind: kindLink, Name: c.VLANInterface})
				st.VLAN = c.VLANInterface
				return nil
			})
	}
	// The bridge.
	if l.bridge == nil {
		add(fmt.Sprintf("create bridge %s", c.Bridge), func(st *state) error {
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.Bridge}}); err != nil {
				return fmt.Errorf("hostnet: creating bridge %s: %w", c.Bridge, err)
			}
			st.add(record{Kind: kindLink, Name: c.Bridge})
			st.Bridge = c.Bridge
			return nil
		})
	}
	// The uplink joins the bridge.
	if up := c.uplinkName(); up != "" {
		var cur netlink.Link
		if c.VLANID != 0 {
			cur = l.vlan
		} else {
			cur = l.parent
		}
		if cur == nil || l.bridge == nil || cur.Attrs().MasterIndex != l.bridge.Attrs().Index {
			add(fmt.Sprintf("attach %s to bridge %s", up, c.Bridge), func(st *state) error {
				link, err := netlink.LinkByName(up)
				if err != nil {
					return err
				}
				br, err := netlink.LinkByName(c.Bridge)
				if err != nil {
					return err
				}
				// A port changes the bridge's MAC (to the lowest of its
				// ports' unless one was set): teardown puts back the MAC of
				// a bridge apply did not create.
				prevMAC := br.Attrs().HardwareAddr.String()
				if err := netlink.LinkSetMaster(link, br); err != nil {
					return fmt.Errorf("hostnet: attaching %s to %s: %w", up, c.Bridge, err)
				}
				if !st.has(kindLink, up) {
					rec := record{Kind: kindMaster, Name: up, Value: c.Bridge}
					if !st.has(kindLink, c.Bridge) {
						rec.Prev = prevMAC
					}
					st.add(rec)
				}
				return nil
			})
		}
		if cur == nil || cur.Attrs().Flags&net.FlagUp == 0 {
			steps = append(steps, setUp(up, cur == nil))
		}
	}
	if l.bridge == nil || l.bridge.Attrs().Flags&net.FlagUp == 0 {
		steps = append(steps, setUp(c.Bridge, l.bridge == nil))
	}

	// This host's address on the bridge, replacing one an earlier apply
	// added.
	have := map[netip.Prefix]bool{}
	if l.bridge != nil {
		addrs, err := netlink.AddrList(l.bridge, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("hostnet: addresses of %s: %w", c.Bridge, err)
		}
		for _, a := range addrs {
			if p, ok := prefixOf(a.IPNet); ok {
				have[p] = true
			}
		}
	}
	for _, rec := range st.Records {
		if rec.Kind == kindAddress && rec.Value != r.hostAddr.String() {
			old := rec
			dev, _, _ := strings.Cut(old.Name, " ")
			add(fmt.Sprintf("remove address %s from %s (no longer configured)", old.Value, dev), func(st *state) error {
				if err := delAddr(dev, old.Value); err != nil {
					return err
				}
				st.remove(kindAddress, old.Name)
				return nil
			})
		}
	}
	if !have[r.hostAddr] {
		add(fmt.Sprintf("add address %s to %s", r.hostAddr, c.Bridge), func(st *state) error {
			br, err := netlink.LinkByName(c.Bridge)
			if err != nil {
				return err
			}
			a, err := netlink.ParseAddr(r.hostAddr.String())
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(br, a); err != nil {
				return fmt.Errorf("hostnet: adding %s to %s: %w", r.hostAddr, c.Bridge, err)
			}
			st.add(record{Kind: kindAddress, Name: c.Bridge + " " + r.hostAddr.String(), Value: r.hostAddr.String()})
			return nil
		})
	}

	// IPv4 forwarding, for NAT; put back when NAT is no longer wanted.
	fwd, err := readSysctl(sysctlForward)
	if err != nil {
		return nil, err
	}
	switch {
	case c.NAT != nil && fwd != "1":
		add(fmt.Sprintf("set sysctl %s = 1 (was %s)", dotted(sysctlForward), fwd), func(st *state) error {
			if err := writeSysctl(sysctlForward, "1"); err != nil {
				return err
			}
			st.add(record{Kind: kindSysctl, Name: sysctlForward, Value: "1", Prev: fwd})
			return nil
		})
	case c.NAT == nil && st.has(kindSysctl, sysctlForward):
		prev := st.Records[st.find(kindSysctl, sysctlForward)].Prev
		add(fmt.Sprintf("restore sysctl %s = %s (NAT is off)", dotted(sysctlForward), prev), func(st *state) error {
			if err := writeSysctl(sysctlForward, prev); err != nil {
				return err
			}
			st.remove(kindSysctl, sysctlForward)
			return nil
		})
	}

	// nftables.
	rules := desiredRules(c, r)
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("hostnet: nftables: %w", err)
	}
	exists, current, err := nftState(conn, rules)
	if err != nil {
		return nil, err
	}
	if !current {
		verb := "create"
		if exists {
			verb = "replace"
		}
		add(fmt.Sprintf("%s nftables table inet %s (%d rules: %s)", verb, TableName, len(rules), ruleSummary(rules)),
			func(st *state) error {
				conn, err := nftables.New()
				if err != nil {
					return err
				}
				if err := writeNFT(conn, exists, rules); err != nil {
					return err
				}
				st.add(record{Kind: kindNFT, Name: "inet " + TableName})
				return nil
			})
	}

	// dnsmasq.
	running := dnsmasqPID(c.StateDir)
	if c.DHCP != nil {
		conf := dnsmasqConfig(c, r, c.StateDir)
		hash := sha256Hex(conf)
		if running == 0 || !fileIs(filepath.Join(c.StateDir, dnsmasqConf), conf) || st.DnsmasqConfig != hash {
			verb := "start"
			if running != 0 {
				verb = "restart"
			}
			add(fmt.Sprintf("%s dnsmasq on %s (DHCP %s, %d static leases, config in %s)", verb, c.Bridge, r.dhcp, len(r.leases), c.StateDir),
				func(st *state) error {
					if err := stopDnsmasq(c.StateDir); err != nil {
						return err
					}
					st.DnsmasqConfig = ""
					if err := writeFile(filepath.Join(c.StateDir, dnsmasqConf), conf); err != nil {
						return err
					}
					st.add(record{Kind: kindDnsmasq, Name: c.StateDir})
					if err := startDnsmasq(context.WithoutCancel(ctx), opts.dnsmasq(), c.StateDir); err != nil {
						return err
					}
					st.DnsmasqConfig = hash
					return nil
				})
		}
	} else if st.has(kindDnsmasq, c.StateDir) {
		add("stop dnsmasq (DHCP is off)", func(st *state) error {
			if err := undoDnsmasq(c.StateDir); err != nil {
				return err
			}
			st.remove(kindDnsmasq, c.StateDir)
			st.DnsmasqConfig = ""
			return nil
		})
	}
	return steps, nil
}

func setUp(name string, willCreate bool) step {
	return step{desc: fmt.Sprintf("set %s up", name), do: func(st *state) error {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if link.Attrs().Flags&net.FlagUp != 0 {
			return nil
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("hostnet: setting %s up: %w", name, err)
		}
		if !willCreate && !st.has(kindLink, name) {
			st.add(record{Kind: kindUp, Name: name})
		}
		return nil
	}}
}

func ruleSummary(rules []nftRule) string {
	n := map[string]int{}
	for _, r := range rules {
		n[r.chain]++
	}
	var parts []string
	for _, c := range nftChains {
		parts = append(parts, fmt.Sprintf("%s %d", c.name, n[c.name]))
	}
	return strings.Join(parts, ", ")
}

// Teardown undoes, in reverse order, what Apply recorded in the config's
// state folder, and removes the folder's files (and the folder when Apply
// created it). Links, addresses and sysctls the host had before Apply are
// left as they were. Undoing goes on past errors, which are reported
// joined; what could not be undone stays recorded for the next run.
func Teardown(ctx context.Context, c *Config, opts Options) (*Result, error) {
	if c.StateDir == "" {
		return nil, fmt.Errorf("hostnet: no state folder: %w", errdefs.ErrInvalidArgument)
	}
	res := &Result{}
	if _, err := os.Stat(filepath.Join(c.StateDir, stateFile)); errors.Is(err, os.ErrNotExist) {
		return res, nil
	}
	var unlock func()
	if !opts.DryRun {
		var err error
		if unlock, err = lock(c.StateDir); err != nil {
			return nil, err
		}
		defer unlock()
	}
	st, err := readState(c.StateDir)
	if err != nil {
		return nil, err
	}
	log := opts.logger()
	var errs []error
	removeDir := false
	for i := len(st.Records) - 1; i >= 0; i-- {
		rec := st.Records[i]
		desc, undo := undoStep(rec)
		if rec.Kind == kindDir {
			removeDir = true
			continue
		}
		res.Steps = append(res.Steps, desc)
		if opts.DryRun {
			continue
		}
		log.Info("teardown", "step", desc)
		if err := undo(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", desc, err))
			continue
		}
		st.Records = append(st.Records[:i], st.Records[i+1:]...)
	}
	if opts.DryRun {
		res.Steps = append(res.Steps, "remove the state in "+c.StateDir)
		return res, nil
	}
	if len(errs) > 0 {
		return res, errors.Join(append(errs, st.write(c.StateDir))...)
	}
	for _, f := range []string{stateFile, dnsmasqConf, dnsmasqLeases, dnsmasqPid, dnsmasqLog, lockFile} {
		if err := os.Remove(filepath.Join(c.StateDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if removeDir {
		unlock()
		if err := os.Remove(c.StateDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("hostnet: removing %s: %w", c.StateDir, err))
		}
	}
	res.Steps = append(res.Steps, "remove the state in "+c.StateDir)
	return res, errors.Join(errs...)
}

// undoStep describes and returns the undoing of one record.
func undoStep(rec record) (string, func() error) {
	switch rec.Kind {
	case kindLink:
		return "delete link " + rec.Name, func() error {
			link, err := netlink.LinkByName(rec.Name)
			if err != nil {
				var nf netlink.LinkNotFoundError
				if errors.As(err, &nf) {
					return nil
				}
				return err
			}
			return netlink.LinkDel(link)
		}
	case kindMaster:
		return "detach " + rec.Name + " from its bridge", func() error {
			link, err := netlink.LinkByName(rec.Name)
			if err != nil {
				var nf netlink.LinkNotFoundError
				if errors.As(err, &nf) {
					return nil
				}
				return err
			}
			if err := netlink.LinkSetNoMaster(link); err != nil {
				return err
			}
			if rec.Prev == "" {
				return nil
			}
			br, err := netlink.LinkByName(rec.Value)
			if err != nil {
				return nil // the bridge is gone: nothing to restore
			}
			mac, err := net.ParseMAC(rec.Prev)
			if err != nil || bytes.Equal(br.Attrs().HardwareAddr, mac) {
				return err
			}
			return netlink.LinkSetHardwareAddr(br, mac)
		}
	case kindUp:
		return "set " + rec.Name + " down", func() error {
			link, err := netlink.LinkByName(rec.Name)
			if err != nil {
				var nf netlink.LinkNotFoundError
				if errors.As(err, &nf) {
					return nil
				}
				return err
			}
			return netlink.LinkSetDown(link)
		}
	case kindAddress:
		dev, _, _ := strings.Cut(rec.Name, " ")
		return fmt.Sprintf("remove address %s from %s", rec.Value, dev), func() error { return delAddr(dev, rec.Value) }
	case kindSysctl:
		return fmt.Sprintf("restore sysctl %s = %s", dotted(rec.Name), rec.Prev), func() error { return writeSysctl(rec.Name, rec.Prev) }
	case kindNFT:
		return "delete nftables table " + rec.Name, func() error {
			conn, err := nftables.New()
			if err != nil {
				return err
			}
			return deleteNFT(conn)
		}
	case kindDnsmasq:
		return "stop dnsmasq and remove its files", func() error { return undoDnsmasq(rec.Name) }
	case kindDir:
		return "remove " + rec.Name, func() error { return nil }
	}
	return "forget unknown record " + rec.Kind + " " + rec.Name, func() error { return nil }
}

func undoDnsmasq(dir string) error {
	if err := stopDnsmasq(dir); err != nil {
		return err
	}
	for _, f := range []string{dnsmasqConf, dnsmasqLeases, dnsmasqPid, dnsmasqLog} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func delAddr(dev, cidr string) error {
	link, err := netlink.LinkByName(dev)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrDel(link, a); err != nil && !errors.Is(err, os.ErrNotExist) &&
		!strings.Contains(err.Error(), "cannot assign requested address") {
		return fmt.Errorf("hostnet: removing %s from %s: %w", cidr, dev, err)
	}
	return nil
}

// readSysctl and writeSysctl use /proc/sys, which shows the network
// namespace of the calling thread.
func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return "", fmt.Errorf("hostnet: sysctl %s: %w", dotted(name), err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("hostnet: sysctl %s: %w", dotted(name), err)
	}
	return nil
}

func dotted(name string) string { return strings.ReplaceAll(name, "/", ".") }

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

func fileIs(path string, want []byte) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Equal(b, want)
}

func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
