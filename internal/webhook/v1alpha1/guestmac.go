package v1alpha1

import (
	"crypto/sha256"
	"encoding/binary"
	"net"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// DefaultGuestMAC is the MAC address a machine's index-th network interface
// gets when it names none: six bytes of SHA-256 over the machine's
// namespace, name and the index, with the locally-administered bit set and
// the multicast bit cleared. The same machine always gets the same
// addresses, and different machines practically never share one.
func DefaultGuestMAC(namespace, name string, index int) string {
	return guestMAC(namespace, name, index, 0)
}

// guestMAC is DefaultGuestMAC with a retry counter mixed in, to step around
// an address the user gave another interface of the machine.
func guestMAC(namespace, name string, index int, attempt uint32) string {
	h := sha256.New()
	h.Write([]byte("capmvm-guest-mac\x00"))
	h.Write([]byte(namespace))
	h.Write([]byte{0})
	h.Write([]byte(name))
	var n [8]byte
	binary.BigEndian.PutUint32(n[:4], uint32(index))
	binary.BigEndian.PutUint32(n[4:], attempt)
	h.Write(n[:])
	sum := h.Sum(nil)
	mac := net.HardwareAddr(sum[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac.String()
}

// defaultGuestMACs fills in the guestMac of every network interface that
// has none, keeping the addresses the user set, and reports whether it
// changed anything.
func defaultGuestMACs(namespace, name string, s *infrav1.MicrovmSpec) bool {
	taken := map[string]bool{}
	for _, n := range s.NetworkInterfaces {
		if norm, msg := parseGuestMAC(n.GuestMAC); msg == "" {
			taken[norm] = true
		}
	}
	changed := false
	for i := range s.NetworkInterfaces {
		n := &s.NetworkInterfaces[i]
		if n.GuestMAC != "" {
			continue
		}
		mac := guestMAC(namespace, name, i, 0)
		for a := uint32(1); taken[mac]; a++ {
			mac = guestMAC(namespace, name, i, a)
		}
		n.GuestMAC = mac
		taken[mac] = true
		changed = true
	}
	return changed
}
