package volumes

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
)

// ThinPool is a device-mapper thin pool (set up by the operator, e.g. with
// `dmsetup create POOL --table "0 S thin-pool META DATA 128 32768"`) in
// which base images become thin volumes and VM volumes their snapshots.
//
// Device-mapper is not in every kernel (not in the test machines'): the
// command sequences are built by the *Commands methods and only run on a
// host that has a pool.
type ThinPool struct {
	// Name is the pool's device name (/dev/mapper/<Name>).
	Name string
	// Dmsetup is the dmsetup binary ("dmsetup" when empty).
	Dmsetup string
}

// sectorSize is device-mapper's unit.
const sectorSize = 512

// DeviceID is the pool's 24-bit device id for a name: stable, so a
// command sequence interrupted by a crash is repeated with the same ids.
func DeviceID(name string) uint32 {
	sum := sha256.Sum256([]byte(name))
	return binary.BigEndian.Uint32(sum[:4]) & 0xffffff
}

func (t *ThinPool) dmsetup() string {
	if t.Dmsetup != "" {
		return t.Dmsetup
	}
	return "dmsetup"
}

func (t *ThinPool) poolPath() string { return "/dev/mapper/" + t.Name }

// thinTable is the table line of a thin volume of sectors sectors.
func (t *ThinPool) thinTable(id uint32, sectors int64) string {
	return fmt.Sprintf("0 %d thin %s %d", sectors, t.poolPath(), id)
}

// BaseDeviceName is the device of the base image file named base.
func BaseDeviceName(base string) string {
	return "flintlock-base-" + strings.TrimSuffix(filepath.Base(base), ".img")
}

// BaseCommands creates the thin volume of a base image of size bytes and
// copies the image into it (run once per base image).
func (t *ThinPool) BaseCommands(base string, size int64) [][]string {
	name := BaseDeviceName(base)
	id := DeviceID(name)
	sectors := (size + sectorSize - 1) / sectorSize
	return [][]string{
		{t.dmsetup(), "message", t.poolPath(), "0", fmt.Sprintf("create_thin %d", id)},
		{t.dmsetup(), "create", name, "--table", t.thinTable(id, sectors)},
		{"dd", "if=" + base, "of=/dev/mapper/" + name, "bs=1M", "conv=sparse,fsync", "status=none"},
	}
}

// SnapshotCommands makes the VM's volume device name a writable snapshot
// of the base image's thin volume, of sizeBytes (at least the base's):
// the origin is suspended while the snapshot is taken, as the kernel
// requires for an active origin.
func (t *ThinPool) SnapshotCommands(base, name string, sizeBytes int64) [][]string {
	origin := BaseDeviceName(base)
	oid, sid := DeviceID(origin), DeviceID(name)
	return [][]string{
		{t.dmsetup(), "suspend", origin},
		{t.dmsetup(), "message", t.poolPath(), "0", fmt.Sprintf("create_snap %d %d", sid, oid)},
		{t.dmsetup(), "resume", origin},
		{t.dmsetup(), "create", name, "--table", t.thinTable(sid, (sizeBytes+sectorSize-1)/sectorSize)},
	}
}

// RemoveCommands removes a VM volume (or base) device and frees its blocks.
func (t *ThinPool) RemoveCommands(name string) [][]string {
	return [][]string{
		{t.dmsetup(), "remove", "--retry", name},
		{t.dmsetup(), "message", t.poolPath(), "0", fmt.Sprintf("delete %d", DeviceID(name))},
	}
}

// Snapshot makes the snapshot device of base named name (creating the
// base's thin volume first when missing) and returns its path.
func (t *ThinPool) Snapshot(ctx context.Context, base, name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("devmapper volume needs a name: %w", errdefs.ErrInvalidArgument)
	}
	fi, err := os.Stat(base)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	dev := "/dev/mapper/" + name
	if _, err := os.Stat(dev); err == nil {
		return dev, nil
	}
	if _, err := os.Stat("/dev/mapper/" + BaseDeviceName(base)); err != nil {
		if err := run(ctx, t.BaseCommands(base, fi.Size())); err != nil {
			return "", err
		}
	}
	if err := run(ctx, t.SnapshotCommands(base, name, fi.Size())); err != nil {
		return "", err
	}
	return dev, nil
}

func run(ctx context.Context, cmds [][]string) error {
	for _, c := range cmds {
		if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
