package process

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// OpenNet opens the host end of guest network device n for a VMM to
// inherit or be passed, so that the VMM needs neither /dev/net/tun nor
// CAP_NET_ADMIN, and describes it for vmm.cmdline. A macvtap is its
// /dev/tapN; a TAP is a descriptor of /dev/net/tun attached to the existing
// persistent device with the flags the VMMs themselves ask for a single
// queue pair (no packet information, virtio-net headers), non-blocking
// when nonblock (Cloud Hypervisor's wish; QEMU sets its own).
func OpenNet(n vmm.NetDevice, nonblock bool) (*os.File, string, error) {
	if n.MacVTap {
		dev := fmt.Sprintf("/dev/tap%d", n.HostIndex)
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return nil, "", fmt.Errorf("macvtap %q: %w", n.HostDevice, err)
		}
		return f, fmt.Sprintf("%s (macvtap %s)", dev, n.HostDevice), nil
	}
	f, err := openTap(n.HostDevice, nonblock)
	if err != nil {
		return nil, "", err
	}
	return f, "/dev/net/tun attached to tap " + n.HostDevice, nil
}

func openTap(name string, nonblock bool) (*os.File, error) {
	flags := unix.O_RDWR | unix.O_CLOEXEC
	if nonblock {
		flags |= unix.O_NONBLOCK
	}
	fd, err := unix.Open("/dev/net/tun", flags, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %q: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %q: attach: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
