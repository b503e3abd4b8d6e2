package network

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
)

// Device names
//
// A VM's host devices are named
//
//	fl<h><k><i>
//
// where <h> is the first 8 characters of the lower-case base32 of
// sha256(uid) (40 bits), <k> is "t" for a TAP and "m" for a macvtap, and <i>
// is the interface's index in the spec (decimal, at most 4 digits). So the
// name is at most 2+8+1+4 = 15 characters (the kernel's IFNAMSIZ-1),
// recognisable as ours by its shape, and derivable from the uid and index
// alone: after a crash, every device of a VM is found from the store record
// (all links named with the uid's prefix), and devices whose prefix matches
// no known VM are orphans.
//
// With 40 bits of hash, two VMs share a prefix with probability about
// n²/2⁴¹ (n VMs on the host): about 5·10⁻⁷ for 1000 VMs.

const (
	namePrefix = "fl"
	hashLen    = 8
	kindTap    = "t"
	kindMacvtp = "m"
	// MaxInterfaces is the number of interfaces a VM can have: the index
	// takes at most 4 digits of the 15-character name.
	MaxInterfaces = 10000
)

var (
	lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)
	// ourName matches every name DeviceName can produce.
	ourName = regexp.MustCompile(`^fl[a-z2-7]{8}[tm](0|[1-9][0-9]{0,3})$`)
)

// NamePrefix is the part of every device name of the VM uid that does not
// depend on the interface ("fl" and the uid's hash).
func NamePrefix(uid string) string {
	sum := sha256.Sum256([]byte(uid))
	return namePrefix + lowerBase32.EncodeToString(sum[:])[:hashLen]
}

// DeviceName is the host device name of interface index (0 ≤ index <
// MaxInterfaces) of the VM uid.
func DeviceName(uid string, index int, macvtap bool) string {
	kind := kindTap
	if macvtap {
		kind = kindMacvtp
	}
	return NamePrefix(uid) + kind + strconv.Itoa(index)
}

// IsDeviceName reports whether name has the shape of a name DeviceName
// produces.
func IsDeviceName(name string) bool { return ourName.MatchString(name) }

// ownedBy reports whether name is a device name of the VM whose prefix is
// prefix.
func ownedBy(name, prefix string) bool {
	return IsDeviceName(name) && strings.HasPrefix(name, prefix)
}

// GuestMAC is the MAC address used for interface index of the VM uid when
// the spec gives none: a locally administered unicast address (first octet
// x2, x6, xA or xE), stable for uid and index.
func GuestMAC(uid string, index int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "liquidmetal guest mac\x00%s\x00%d", uid, index))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return mac.String()
}

// parseGuestMAC returns the canonical form of a unicast Ethernet MAC.
func parseGuestMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("invalid MAC address %q", s)
	}
	if mac[0]&0x01 != 0 {
		return nil, fmt.Errorf("MAC address %s is multicast", mac)
	}
	return mac, nil
}
