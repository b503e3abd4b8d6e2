package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// macvtap character devices
//
// A macvtap link N is used through the character device /dev/tapN. The
// kernel registers it as soon as the link exists, and devtmpfs (mounted on
// /dev on current systems, including inside containers that see the host's
// devtmpfs) creates and removes the node itself, also for links in other
// network namespaces; udev is not needed. When the node is missing anyway
// (a /dev without devtmpfs), ensureTapNode creates it from the device
// number the kernel publishes in sysfs, and removeLink deletes such a node
// with its link.

// devDir is where the /dev/tapN nodes live.
const devDir = "/dev"

type tapNode struct {
	path string
	dev  uint64
}

// macvtapNode returns the node path and device number of the macvtap link
// name with index idx, read from sysfs.
func macvtapNode(name string, idx int) (tapNode, error) {
	tap := "tap" + strconv.Itoa(idx)
	node := tapNode{path: filepath.Join(devDir, tap)}
	// The class path only shows links of the network namespace sysfs was
	// mounted in; /sys/dev/char lists every character device.
	b, err := os.ReadFile(filepath.Join("/sys/class/net", name, "macvtap", tap, "dev"))
	if err == nil {
		node.dev, err = parseDevNumber(string(b))
		return node, err
	}
	entries, err := os.ReadDir("/sys/dev/char")
	if err != nil {
		return node, fmt.Errorf("network: device number of %s: %w", tap, err)
	}
	suffix := "/net/" + name + "/macvtap/" + tap
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/sys/dev/char", e.Name()))
		if err == nil && strings.HasSuffix(target, suffix) {
			node.dev, err = parseDevNumber(e.Name())
			return node, err
		}
	}
	return node, fmt.Errorf("network: no character device for macvtap %s (%s) in sysfs", name, tap)
}

func parseDevNumber(s string) (uint64, error) {
	maj, min, ok := strings.Cut(strings.TrimSpace(s), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("network: bad device number %q", s)
	}
	return unix.Mkdev(uint32(ma), uint32(mi)), nil
}

// ensureTapNode makes /dev/tap<idx> the character device of the macvtap
// link name.
func (m *Manager) ensureTapNode(name string, idx int) error {
	node, err := macvtapNode(name, idx)
	if err != nil {
		return err
	}
	var st unix.Stat_t
	err = unix.Stat(node.path, &st)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == node.dev:
		return nil
	case err == nil:
		// A stale node of an earlier device: replace it.
		m.log.Warn("replacing stale macvtap node", "path", node.path)
		if err := os.Remove(node.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("network: removing stale %s: %w", node.path, err)
		}
	case !errors.Is(err, unix.ENOENT):
		return fmt.Errorf("network: %s: %w", node.path, err)
	}
	if err := unix.Mknod(node.path, unix.S_IFCHR|0o600, int(node.dev)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("network: creating %s: %w", node.path, err)
	}
	m.log.Info("created macvtap node", "path", node.path, "major", unix.Major(node.dev), "minor", unix.Minor(node.dev))
	return nil
}

// removeTapNodeIfStale removes node when it still exists with the device
// number of a macvtap that was deleted (devtmpfs removes only the nodes it
// created).
func removeTapNodeIfStale(node tapNode) error {
	var st unix.Stat_t
	if err := unix.Stat(node.path, &st); err != nil {
		return nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != node.dev {
		return nil
	}
	if err := os.Remove(node.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("network: removing %s: %w", node.path, err)
	}
	return nil
}
