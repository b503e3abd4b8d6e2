package volumes

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
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
// Every dmsetup and dd invocation goes through Run, the seam the tests
// record: device-mapper thin targets are not in every kernel (not in the
// test machines'), so the flows below were checked against a recording
// runner that models the pool, never against a real one.
type ThinPool struct {
	// Name is the pool's device name (/dev/mapper/<Name>).
	Name string
	// Dmsetup is the dmsetup binary ("dmsetup" when empty).
	Dmsetup string
	// Run runs one command (ExecRunner when nil).
	Run Runner
}

// Runner runs one command, argv[0] being the program, and returns its
// combined output; a failure is an error carrying that output.
type Runner func(ctx context.Context, argv []string) ([]byte, error)

// ExecRunner runs the command as a child process.
func ExecRunner(ctx context.Context, argv []string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// sectorSize is device-mapper's unit.
const sectorSize = 512

// DeviceID is the pool's 24-bit device id for a name: stable, so a
// command sequence interrupted by a crash is repeated with the same ids.
// Two names may collide (then create_thin/create_snap fails and the VM
// with it, rather than sharing a device).
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

func (t *ThinPool) run(ctx context.Context, argv []string) ([]byte, error) {
	if t.Run != nil {
		return t.Run(ctx, argv)
	}
	return ExecRunner(ctx, argv)
}

// runAll runs cmds in order and returns how many succeeded.
func (t *ThinPool) runAll(ctx context.Context, cmds [][]string) (int, error) {
	for i, c := range cmds {
		if _, err := t.run(ctx, c); err != nil {
			return i, fmt.Errorf("devmapper: %w", err)
		}
	}
	return len(cmds), nil
}

func (t *ThinPool) poolPath() string { return "/dev/mapper/" + t.Name }

// DevicePath is where a device of the pool appears.
func DevicePath(name string) string { return "/dev/mapper/" + name }

// thinTable is the table line of a thin volume of sectors sectors.
func (t *ThinPool) thinTable(id uint32, sectors int64) string {
	return fmt.Sprintf("0 %d thin %s %d", sectors, t.poolPath(), id)
}

func sectors(size int64) int64 { return (size + sectorSize - 1) / sectorSize }

// Check verifies that the pool exists and answers (`dmsetup status`); a
// host configured for devmapper without it must not start.
func (t *ThinPool) Check(ctx context.Context) error {
	if t.Name == "" || strings.ContainsAny(t.Name, "/ \x00") {
		return fmt.Errorf("devmapper: thin pool name %q: %w", t.Name, errdefs.ErrInvalidArgument)
	}
	out, err := t.run(ctx, []string{t.dmsetup(), "status", t.Name})
	if err != nil {
		return fmt.Errorf("devmapper: thin pool %q is not usable: %w: %w", t.Name, err, errdefs.ErrFailedPrecondition)
	}
	// "0 <sectors> thin-pool <transaction> <used>/<total> ..."
	if f := strings.Fields(string(out)); len(f) < 3 || f[2] != "thin-pool" {
		return fmt.Errorf("devmapper: %q is not a thin pool (status %q): %w", t.Name, strings.TrimSpace(string(out)), errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Active reports whether the device name is set up (`dmsetup info`).
func (t *ThinPool) Active(ctx context.Context, name string) (bool, error) {
	out, err := t.run(ctx, []string{t.dmsetup(), "info", "-c", "--noheadings", "-o", "name", name})
	if err == nil {
		return true, nil
	}
	msg := string(out) + err.Error()
	if strings.Contains(msg, "does not exist") || strings.Contains(msg, "No such device") {
		return false, nil
	}
	return false, fmt.Errorf("devmapper: %w", err)
}

// activateCommand sets up the device of an existing thin volume (after a
// host reboot, device-mapper devices are gone while the pool keeps them).
func (t *ThinPool) activateCommand(name string, size int64) []string {
	return []string{t.dmsetup(), "create", name, "--table", t.thinTable(DeviceID(name), sectors(size))}
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
	return [][]string{
		{t.dmsetup(), "message", t.poolPath(), "0", fmt.Sprintf("create_thin %d", id)},
		{t.dmsetup(), "create", name, "--table", t.thinTable(id, sectors(size))},
		{"dd", "if=" + base, "of=" + DevicePath(name), "bs=1M", "conv=sparse,fsync", "status=none"},
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
		{t.dmsetup(), "create", name, "--table", t.thinTable(sid, sectors(sizeBytes))},
	}
}

// RemoveCommands removes a VM volume (or base) device and frees its blocks.
func (t *ThinPool) RemoveCommands(name string) [][]string {
	return [][]string{
		{t.dmsetup(), "remove", "--retry", name},
		t.deleteCommand(name),
	}
}

func (t *ThinPool) deleteCommand(name string) []string {
	return []string{t.dmsetup(), "message", t.poolPath(), "0", fmt.Sprintf("delete %d", DeviceID(name))}
}

// thinMarker records, next to a base image, that its thin volume was
// created and filled: after a reboot it is only activated again.
func thinMarker(base string) string { return strings.TrimSuffix(base, ".img") + ".thin" }

// ensureBase makes the base image's thin volume active, creating and
// filling it the first time. The caller holds the base image's lock. A
// failed creation is rolled back, so it is tried afresh.
func (t *ThinPool) ensureBase(ctx context.Context, base string, size int64) error {
	name := BaseDeviceName(base)
	if ok, err := t.Active(ctx, name); err != nil || ok {
		return err
	}
	if _, err := os.Stat(thinMarker(base)); err == nil {
		_, err := t.runAll(ctx, [][]string{t.activateCommand(name, size)})
		return err
	}
	cmds := t.BaseCommands(base, size)
	done, err := t.runAll(ctx, cmds)
	if err != nil {
		var undo [][]string
		if done >= 2 { // the device was set up
			undo = append(undo, []string{t.dmsetup(), "remove", "--retry", name})
		}
		if done >= 1 { // the thin volume exists
			undo = append(undo, t.deleteCommand(name))
		}
		if _, uerr := t.runAll(ctx, undo); uerr != nil {
			err = errors.Join(err, fmt.Errorf("rolling back: %w", uerr))
		}
		return err
	}
	marker := fmt.Sprintf("pool=%s id=%d device=%s\n", t.Name, DeviceID(name), name)
	if err := os.WriteFile(thinMarker(base), []byte(marker), 0o640); err != nil {
		return fmt.Errorf("devmapper: %w", err)
	}
	return nil
}

// snapshot makes the device name a snapshot of base's thin volume (made
// when missing) and returns its path. made says the snapshot was taken
// before (its device is then only activated again).
func (t *ThinPool) snapshot(ctx context.Context, base, name string, size int64, made bool) (string, error) {
	dev := DevicePath(name)
	if ok, err := t.Active(ctx, name); err != nil {
		return "", err
	} else if ok {
		return dev, nil
	}
	if made {
		_, err := t.runAll(ctx, [][]string{t.activateCommand(name, size)})
		return dev, err
	}
	if err := t.ensureBase(ctx, base, size); err != nil {
		return "", err
	}
	cmds := t.SnapshotCommands(base, name, size)
	suspend, snap, resume, create := cmds[0], cmds[1], cmds[2], cmds[3]
	if _, err := t.runAll(ctx, [][]string{suspend}); err != nil {
		return "", err
	}
	_, snapErr := t.runAll(ctx, [][]string{snap})
	// The origin runs again whatever became of the snapshot.
	if _, err := t.runAll(ctx, [][]string{resume}); err != nil {
		return "", errors.Join(snapErr, err)
	}
	if snapErr != nil {
		return "", snapErr
	}
	if _, err := t.runAll(ctx, [][]string{create}); err != nil {
		if _, uerr := t.runAll(ctx, [][]string{t.deleteCommand(name)}); uerr != nil {
			err = errors.Join(err, fmt.Errorf("rolling back: %w", uerr))
		}
		return "", err
	}
	return dev, nil
}

// remove removes the device name (when active) and deletes its thin
// volume. The caller knows the thin volume was made (a VM's volume link,
// a base's marker); when its device is not active and the delete fails,
// an interrupted earlier removal is taken to have deleted it already.
func (t *ThinPool) remove(ctx context.Context, name string) error {
	active, err := t.Active(ctx, name)
	if err != nil {
		return err
	}
	cmds := t.RemoveCommands(name)
	if active {
		if _, err := t.runAll(ctx, cmds[:1]); err != nil {
			return err
		}
	}
	if _, err := t.runAll(ctx, cmds[1:]); err != nil && active {
		return err
	}
	return nil
}

// devmapperVolume gives a VM its volume dst of base: a thin snapshot of
// base's thin volume named name, dst being a symbolic link to its device
// (/dev/mapper/<name>), so the VM folder names the VM's disk as with the
// other methods. A hard link of base next to dst (<id>.base.img) marks
// base as used, which keeps GC off the base image and its thin volume
// while the VM exists. After a reboot the link is dangling: the snapshot
// is then only activated again.
func (p *Provisioner) devmapperVolume(ctx context.Context, base, dst, name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/ \x00") {
		return "", fmt.Errorf("devmapper volume name %q: %w", name, errdefs.ErrInvalidArgument)
	}
	fi, err := os.Stat(base)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	dev := DevicePath(name)
	target, err := os.Readlink(dst)
	made := err == nil && target == dev
	if err := linkOrClone(base, strings.TrimSuffix(dst, ".img")+baseSuffix); err != nil {
		return "", err
	}
	if _, err := p.pool.snapshot(ctx, base, name, fi.Size(), made); err != nil {
		return "", err
	}
	if !made {
		tmp := dst + ".link-tmp"
		_ = os.Remove(tmp)
		if err := os.Symlink(dev, tmp); err != nil {
			return "", fmt.Errorf("volume %s: %w", dst, err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("volume %s: %w", dst, err)
		}
	}
	p.log.Debug("devmapper snapshot ready", "device", dev, "base", filepath.Base(base), "reactivated", made)
	return dev, nil
}

// Release removes the VM volume at path made by Volume; name is the
// VolumeOptions.Name it was made with. For a devmapper volume (path links
// to its device) the snapshot device is removed and its thin volume
// deleted first. A missing volume is not an error.
func (p *Provisioner) Release(ctx context.Context, path, name string) error {
	if target, err := os.Readlink(path); err == nil && name != "" && target == DevicePath(name) {
		if p.pool == nil {
			return fmt.Errorf("volume %s is the devmapper device %s, but no thin pool is configured: %w", path, target, errdefs.ErrFailedPrecondition)
		}
		if err := p.pool.remove(ctx, name); err != nil {
			return fmt.Errorf("volume %s: %w", path, err)
		}
	}
	return RemoveVolume(path)
}

// removeBaseDevice removes the thin volume of base image img (when it has
// one) before GC removes the file; the caller holds the base's lock.
func (p *Provisioner) removeBaseDevice(ctx context.Context, img string) error {
	if p.pool == nil {
		return nil
	}
	if _, err := os.Stat(thinMarker(img)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := p.pool.remove(ctx, BaseDeviceName(img)); err != nil {
		return err
	}
	return removeIfExists(thinMarker(img))
}
