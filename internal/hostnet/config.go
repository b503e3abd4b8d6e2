package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	"sigs.k8s.io/yaml"
)

// DefaultStateDir holds what apply created, when the config names no
// stateDir.
const DefaultStateDir = "/var/lib/flintlock/hostnet"

// Config is the host network of one host, as the YAML file gives it:
//
//	parentInterface: eth1        # the NIC the VM VLAN rides on
//	vlanID: 100                  # tagged on the parent; 0: the parent itself joins the bridge
//	bridge: lmbr0                # the bridge VM TAPs attach to (flintlockd --bridge-name)
//	address: 10.20.0.1/24        # this host on the VM subnet
//	dhcp:                        # only on the host that serves the subnet
//	  range: 10.20.0.100-10.20.0.199
//	  leaseTime: 1h
//	  dnsServers: [192.0.2.53]
//	vipRange: 10.20.0.10-10.20.0.19   # control-plane VIPs, never leased
//	staticLeases:
//	- {mac: "02:00:00:00:00:10", ip: 10.20.0.50, hostname: cp-1}
//	nat:
//	  egressInterface: eth0      # masquerade VM traffic leaving here
//	managementPorts: [9090, 9091] # flintlockd's ports, closed to VMs
type Config struct {
	// StateDir holds the state of what apply created, the dnsmasq
	// configuration, leases, pid and log (default DefaultStateDir).
	StateDir string `json:"stateDir,omitempty"`
	// ParentInterface is the existing NIC that carries the VM subnet to
	// the other hosts. Empty: the bridge has no uplink (VMs of this host
	// only).
	ParentInterface string `json:"parentInterface,omitempty"`
	// VLANID tags the VM subnet on the parent (1-4094). 0 attaches the
	// parent itself to the bridge (a NIC dedicated to VMs, with no address).
	VLANID int `json:"vlanID,omitempty"`
	// VLANInterface names the VLAN interface (default
	// "<parent>.<vlanID>" when it fits in 15 characters, else "lmvlan<id>").
	VLANInterface string `json:"vlanInterface,omitempty"`
	// Bridge is the bridge the VM TAPs attach to. Required.
	Bridge string `json:"bridge"`
	// Address is this host's address on the bridge with the VM subnet's
	// prefix length (CIDR). Required; IPv4.
	Address string `json:"address"`
	// DHCP runs dnsmasq on the bridge. One host of a shared subnet serves
	// it; leave it out on the others.
	DHCP *DHCP `json:"dhcp,omitempty"`
	// VIPRange ("first-last") is kept out of every lease, for
	// control-plane virtual IPs.
	VIPRange string `json:"vipRange,omitempty"`
	// StaticLeases give fixed addresses to known MACs (needs DHCP).
	StaticLeases []StaticLease `json:"staticLeases,omitempty"`
	// NAT masquerades traffic from the VM subnet leaving through
	// EgressInterface (and turns IPv4 forwarding on).
	NAT *NAT `json:"nat,omitempty"`
	// ManagementPorts are TCP ports of this host (flintlockd's gRPC, HTTP,
	// metrics) that packets arriving from the bridge may not reach.
	ManagementPorts []int `json:"managementPorts,omitempty"`
}

// DHCP configures the subnet's DHCP server.
type DHCP struct {
	// Range is the dynamic pool, "first-last", inside the subnet.
	Range string `json:"range"`
	// LeaseTime in dnsmasq's form: seconds, or a number with s, m, h, d or
	// w, or "infinite" (default 1h).
	LeaseTime string `json:"leaseTime,omitempty"`
	// Router is the default gateway handed out (default: Address).
	Router string `json:"router,omitempty"`
	// DNSServers are handed out as the name servers (none by default).
	DNSServers []string `json:"dnsServers,omitempty"`
}

// StaticLease is a fixed address for a MAC.
type StaticLease struct {
	MAC      string `json:"mac"`
	IP       string `json:"ip"`
	Hostname string `json:"hostname,omitempty"`
}

// NAT configures egress masquerading.
type NAT struct {
	EgressInterface string `json:"egressInterface"`
}

// LoadConfig reads and validates a config file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("hostnet: reading config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes YAML (unknown keys are errors), fills defaults and
// validates the result on its own (Check looks at the host).
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("hostnet: config: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) setDefaults() {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.VLANInterface == "" && c.ParentInterface != "" && c.VLANID != 0 {
		c.VLANInterface = fmt.Sprintf("%s.%d", c.ParentInterface, c.VLANID)
		if len(c.VLANInterface) > maxIfName {
			c.VLANInterface = fmt.Sprintf("lmvlan%d", c.VLANID)
		}
	}
	if c.DHCP != nil && c.DHCP.LeaseTime == "" {
		c.DHCP.LeaseTime = "1h"
	}
}

// maxIfName is the kernel's IFNAMSIZ less the NUL.
const maxIfName = 15

var (
	ifNameRE    = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
	leaseTimeRE = regexp.MustCompile(`^([1-9][0-9]*[smhdw]?|infinite)$`)
	hostnameRE  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
)

func validIfName(field, name string) error {
	if !ifNameRE.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("%s: %q is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)", field, name)
	}
	return nil
}

// addrRange is an inclusive IPv4 range.
type addrRange struct{ first, last netip.Addr }

func (r addrRange) contains(a netip.Addr) bool {
	return r.first.Compare(a) <= 0 && a.Compare(r.last) <= 0
}

func (r addrRange) overlaps(o addrRange) bool {
	return r.first.Compare(o.last) <= 0 && o.first.Compare(r.last) <= 0
}

func (r addrRange) String() string { return r.first.String() + "-" + r.last.String() }

func parseRange(s string) (addrRange, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return addrRange{}, fmt.Errorf("%q is not a range first-last", s)
	}
	first, err1 := netip.ParseAddr(strings.TrimSpace(a))
	last, err2 := netip.ParseAddr(strings.TrimSpace(b))
	if err1 != nil || err2 != nil || !first.Is4() || !last.Is4() {
		return addrRange{}, fmt.Errorf("%q is not a range of two IPv4 addresses", s)
	}
	if last.Less(first) {
		return addrRange{}, fmt.Errorf("range %q ends before it starts", s)
	}
	return addrRange{first, last}, nil
}

// resolved is a validated config in parsed form.
type resolved struct {
	hostAddr netip.Prefix // the address with the subnet's length
	subnet   netip.Prefix // masked
	dhcp     addrRange
	vip      *addrRange
	router   netip.Addr
	dns      []netip.Addr
	leases   []lease
}

type lease struct {
	mac      net.HardwareAddr
	ip       netip.Addr
	hostname string
}

// Validate checks the config on its own, without looking at the host, and
// reports every problem (joined, each wrapping errdefs.ErrInvalidArgument).
func (c *Config) Validate() error {
	_, err := c.resolve()
	return err
}

func (c *Config) resolve() (*resolved, error) {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	r := &resolved{}

	if c.StateDir != "" && !filepath.IsAbs(c.StateDir) {
		bad("stateDir: %q is not an absolute path", c.StateDir)
	}
	if c.Bridge == "" {
		bad("bridge: required")
	} else if err := validIfName("bridge", c.Bridge); err != nil {
		bad("%v", err)
	}
	if c.ParentInterface != "" {
		if err := validIfName("parentInterface", c.ParentInterface); err != nil {
			bad("%v", err)
		}
		if c.ParentInterface == c.Bridge {
			bad("parentInterface: the parent cannot be the bridge %q", c.Bridge)
		}
	}
	if c.VLANID < 0 || c.VLANID > 4094 {
		bad("vlanID: %d is not in 1-4094 (or 0 for no VLAN)", c.VLANID)
	}
	if c.VLANID != 0 && c.ParentInterface == "" {
		bad("vlanID: a VLAN needs parentInterface")
	}
	if c.VLANInterface != "" {
		if c.VLANID == 0 {
			bad("vlanInterface: set without vlanID")
		} else if err := validIfName("vlanInterface", c.VLANInterface); err != nil {
			bad("%v", err)
		} else if c.VLANInterface == c.Bridge || c.VLANInterface == c.ParentInterface {
			bad("vlanInterface: %q is also the bridge or the parent", c.VLANInterface)
		}
	}

	if c.Address == "" {
		bad("address: required (this host's address on the VM subnet, CIDR)")
	} else if p, err := netip.ParsePrefix(c.Address); err != nil || !p.Addr().Is4() {
		bad("address: %q is not an IPv4 CIDR address like 10.20.0.1/24", c.Address)
	} else if p.Bits() > 30 {
		bad("address: /%d leaves no room for VMs", p.Bits())
	} else {
		r.hostAddr = p
		r.subnet = p.Masked()
		if p.Addr() == r.subnet.Addr() || p.Addr() == lastAddr(r.subnet) {
			bad("address: %s is the subnet's network or broadcast address", p.Addr())
		}
	}
	inSubnet := func(a netip.Addr) bool { return r.subnet.IsValid() && r.subnet.Contains(a) }

	if c.VIPRange != "" {
		v, err := parseRange(c.VIPRange)
		switch {
		case err != nil:
			bad("vipRange: %v", err)
		case r.subnet.IsValid() && (!inSubnet(v.first) || !inSubnet(v.last)):
			bad("vipRange: %s is not inside the subnet %s", v, r.subnet)
		case r.hostAddr.IsValid() && v.contains(r.hostAddr.Addr()):
			bad("vipRange: %s holds this host's address %s", v, r.hostAddr.Addr())
		default:
			r.vip = &v
		}
	}

	if d := c.DHCP; d != nil {
		rg, err := parseRange(d.Range)
		switch {
		case err != nil:
			bad("dhcp.range: %v", err)
		case r.subnet.IsValid() && (!inSubnet(rg.first) || !inSubnet(rg.last)):
			bad("dhcp.range: %s is not inside the subnet %s", rg, r.subnet)
		case r.hostAddr.IsValid() && rg.contains(r.hostAddr.Addr()):
			bad("dhcp.range: %s holds this host's address %s", rg, r.hostAddr.Addr())
		default:
			r.dhcp = rg
			if r.vip != nil && r.vip.overlaps(rg) {
				bad("vipRange: %s is inside the DHCP range %s: VIPs must never be leased", r.vip, rg)
			}
		}
		if !leaseTimeRE.MatchString(d.LeaseTime) {
			bad("dhcp.leaseTime: %q is not seconds, a number with s/m/h/d/w, or infinite", d.LeaseTime)
		}
		r.router = r.hostAddr.Addr()
		if d.Router != "" {
			a, err := netip.ParseAddr(d.Router)
			if err != nil || !a.Is4() || !inSubnet(a) {
				bad("dhcp.router: %q is not an IPv4 address in the subnet", d.Router)
			} else {
				r.router = a
			}
		}
		for _, s := range d.DNSServers {
			a, err := netip.ParseAddr(s)
			if err != nil || !a.Is4() {
				bad("dhcp.dnsServers: %q is not an IPv4 address", s)
				continue
			}
			r.dns = append(r.dns, a)
		}
	}

	if len(c.StaticLeases) > 0 && c.DHCP == nil {
		bad("staticLeases: need dhcp (this host serves no leases)")
	}
	macs := map[string]int{}
	ips := map[netip.Addr]int{}
	for i, l := range c.StaticLeases {
		f := fmt.Sprintf("staticLeases[%d]", i)
		mac, err := net.ParseMAC(l.MAC)
		if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
			bad("%s.mac: %q is not a unicast Ethernet MAC", f, l.MAC)
			continue
		}
		if j, dup := macs[mac.String()]; dup {
			bad("%s.mac: duplicate MAC %s (also staticLeases[%d])", f, mac, j)
			continue
		}
		macs[mac.String()] = i
		ip, err := netip.ParseAddr(l.IP)
		if err != nil || !ip.Is4() {
			bad("%s.ip: %q is not an IPv4 address", f, l.IP)
			continue
		}
		switch {
		case r.subnet.IsValid() && !inSubnet(ip):
			bad("%s.ip: %s is not inside the subnet %s", f, ip, r.subnet)
			continue
		case r.hostAddr.IsValid() && ip == r.hostAddr.Addr():
			bad("%s.ip: %s is this host's address", f, ip)
			continue
		case r.vip != nil && r.vip.contains(ip):
			bad("%s.ip: %s is inside the VIP range %s", f, ip, r.vip)
			continue
		}
		if j, dup := ips[ip]; dup {
			bad("%s.ip: %s is also staticLeases[%d]'s", f, ip, j)
			continue
		}
		ips[ip] = i
		if l.Hostname != "" && !hostnameRE.MatchString(l.Hostname) {
			bad("%s.hostname: %q is not a host name", f, l.Hostname)
			continue
		}
		r.leases = append(r.leases, lease{mac: mac, ip: ip, hostname: l.Hostname})
	}

	if c.NAT != nil {
		if c.NAT.EgressInterface == "" {
			bad("nat.egressInterface: required")
		} else if err := validIfName("nat.egressInterface", c.NAT.EgressInterface); err != nil {
			bad("%v", err)
		} else if c.NAT.EgressInterface == c.Bridge {
			bad("nat.egressInterface: cannot be the bridge")
		}
	}
	seen := map[int]bool{}
	for _, p := range c.ManagementPorts {
		if p < 1 || p > 65535 {
			bad("managementPorts: %d is not a TCP port", p)
		} else if seen[p] {
			bad("managementPorts: %d given twice", p)
		}
		seen[p] = true
	}

	if len(errs) > 0 {
		return nil, fmt.Errorf("hostnet: invalid config: %w", joinKind(errs, errdefs.ErrInvalidArgument))
	}
	return r, nil
}

// joinKind joins problems into one error wrapping kind.
func joinKind(problems []string, kind error) error {
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = errors.New(p)
	}
	return fmt.Errorf("%w: %w", errors.Join(errs...), kind)
}

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1<<host - 1)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
