package volumes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/liquidmetal-go/liquidmetal/internal/keylock"
)

// Method is how a VM's writable volume is made from a base image.
type Method string

// The copy-on-write methods, best first.
const (
	// MethodReflink clones the base with FICLONE (xfs, btrfs): a raw file
	// sharing the base's blocks until written.
	MethodReflink Method = "reflink"
	// MethodDevmapper snapshots the base in a device-mapper thin pool.
	MethodDevmapper Method = "devmapper"
	// MethodQcow2 makes a qcow2 overlay backed by the base (QEMU only).
	MethodQcow2 Method = "qcow2"
	// MethodCopy is a sparse full copy: the fallback for providers that
	// need raw files on a filesystem without reflinks.
	MethodCopy Method = "copy"
)

// Methods lists every method (the metric's label values).
var Methods = []Method{MethodReflink, MethodDevmapper, MethodQcow2, MethodCopy}

// Disk formats.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// QemuImg is the qemu-img binary (qemu-utils) making qcow2 overlays.
var QemuImg = "qemu-img"

// baseSuffix names the hard link of the base image a qcow2 overlay
// <id>.img is backed by: <id>.base.img, next to it in the VM's folder.
const baseSuffix = ".base.img"

// ProvisionerOptions configures a Provisioner.
type ProvisionerOptions struct {
	// Dir holds the base images (Dir/base) and must be on the same
	// filesystem as the VMs' folders: volumes hard-link or clone them.
	Dir string
	// Method forces a method; empty probes the host (New).
	Method Method
	// ThinPool, when set, makes devmapper the method.
	ThinPool *ThinPool
	Logger   *slog.Logger
}

// Provisioner builds base images once per image and size and gives each
// VM its own volume from them in time independent of the image's size. It
// is safe for concurrent use, also by several processes sharing Dir.
type Provisioner struct {
	dir    string
	method Method
	pool   *ThinPool
	log    *slog.Logger
	locks  keylock.Map
}

// NewProvisioner picks the method for this host (logged): the forced one,
// devmapper with a thin pool, reflink when Dir's filesystem clones files,
// else qcow2 (and sparse copies for providers that need raw files).
func NewProvisioner(o ProvisionerOptions) (*Provisioner, error) {
	if o.Dir == "" {
		return nil, fmt.Errorf("volumes: a folder is required: %w", errdefs.ErrInvalidArgument)
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Provisioner{dir: o.Dir, method: o.Method, pool: o.ThinPool, log: log.With("component", "volumes")}
	if err := os.MkdirAll(p.baseDir(), 0o750); err != nil {
		return nil, fmt.Errorf("volumes: %w", err)
	}
	why := "forced"
	switch {
	case p.method != "":
	case p.pool != nil:
		p.method, why = MethodDevmapper, "thin pool "+p.pool.Name+" configured"
	default:
		ok, err := ProbeReflink(p.baseDir())
		if err != nil {
			return nil, err
		}
		if ok {
			p.method, why = MethodReflink, "the state folder's filesystem supports reflinks"
		} else {
			p.method, why = MethodQcow2, "no reflinks on the state folder's filesystem; raw-only providers get sparse copies"
		}
	}
	switch p.method {
	case MethodReflink, MethodQcow2, MethodCopy:
	case MethodDevmapper:
		if p.pool == nil {
			return nil, fmt.Errorf("volumes: devmapper needs a thin pool: %w", errdefs.ErrInvalidArgument)
		}
	default:
		return nil, fmt.Errorf("volumes: unknown method %q: %w", p.method, errdefs.ErrInvalidArgument)
	}
	p.log.Info("volume method chosen", "method", p.method, "reason", why, "dir", o.Dir)
	return p, nil
}

// Method is the method chosen for this host.
func (p *Provisioner) Method() Method { return p.method }

// Register exports the method as flintlockd_volume_method{method} (1 for
// the chosen one, 0 for the others).
func (p *Provisioner) Register(reg prometheus.Registerer) error {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flintlockd_volume_method",
		Help: "How VM volumes are made from base images on this host (1 = in use).",
	}, []string{"method"})
	for _, m := range Methods {
		v := 0.0
		if m == p.method {
			v = 1
		}
		g.WithLabelValues(string(m)).Set(v)
	}
	return reg.Register(g)
}

func (p *Provisioner) baseDir() string { return filepath.Join(p.dir, "base") }

// BaseKey names a base image: the image's content digest, the size the
// filesystem was built at (0: the default size) and the partition taken
// from a disk image ("" for a filesystem built from the tree).
type BaseKey struct {
	Digest    string
	SizeMB    int
	Partition string
}

func (k BaseKey) name() (string, error) {
	d := k.Digest
	if i := strings.IndexByte(d, ':'); i >= 0 {
		d = d[i+1:]
	}
	if d == "" || strings.ContainsAny(d, "/\x00.") || strings.ContainsAny(k.Partition, "/\x00.") || k.SizeMB < 0 {
		return "", fmt.Errorf("base image key %+v: %w", k, errdefs.ErrInvalidArgument)
	}
	size := "default"
	if k.SizeMB > 0 {
		size = strconv.Itoa(k.SizeMB) + "m"
	}
	n := d + "-" + size
	if k.Partition != "" {
		n += "-p" + k.Partition
	}
	return n, nil
}

// BuildFunc writes a base image at dst, atomically (BuildExt4 does).
type BuildFunc func(ctx context.Context, dst string) error

// VolumeOptions are per-volume choices.
type VolumeOptions struct {
	// ReadOnly volumes share the base image (a hard link to it).
	ReadOnly bool
	// RawOnly: the provider cannot open qcow2 (Firecracker, Cloud
	// Hypervisor); a qcow2 host then makes a sparse copy.
	RawOnly bool
	// Name names a devmapper device (unique per VM and volume).
	Name string
}

// Volume is a VM's volume as made.
type Volume struct {
	Path   string
	Format string
	Method Method
	// Base is the base image it came from.
	Base string
	// BaseBuilt is true when this call built the base image.
	BaseBuilt bool
}

// Volume makes dst the VM's volume of key, building the base image with
// build first when it does not exist (once, also across processes). dst
// appears atomically. A base image in use is never collected by GC while
// this runs.
func (p *Provisioner) Volume(ctx context.Context, key BaseKey, build BuildFunc, dst string, o VolumeOptions) (Volume, error) {
	name, err := key.name()
	if err != nil {
		return Volume{}, err
	}
	unlock, err := p.lock(name)
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	base := filepath.Join(p.baseDir(), name+".img")
	v := Volume{Base: base, Path: dst, Format: FormatRaw}
	if _, err := os.Stat(base); errors.Is(err, fs.ErrNotExist) {
		start := time.Now()
		if err := build(ctx, base); err != nil {
			return Volume{}, err
		}
		// Readable by an unprivileged VMM (a qcow2 backing file is not
		// granted to it one by one); written by nobody.
		if err := os.Chmod(base, 0o644); err != nil {
			return Volume{}, fmt.Errorf("base image: %w", err)
		}
		v.BaseBuilt = true
		p.log.Info("base image built", "base", name, "took", time.Since(start).Round(time.Millisecond))
	} else if err != nil {
		return Volume{}, fmt.Errorf("base image: %w", err)
	}
	// The modification time is the last use, for GC's grace period.
	now := time.Now()
	if err := os.Chtimes(base, now, now); err != nil {
		return Volume{}, fmt.Errorf("base image: %w", err)
	}

	switch {
	case o.ReadOnly:
		v.Method = "shared"
		err = linkOrClone(base, dst)
	case p.method == MethodDevmapper:
		v.Method = MethodDevmapper
		_, err = p.devmapperVolume(ctx, base, dst, o.Name) // dst links to the device
	case p.method == MethodReflink:
		v.Method = MethodReflink
		err = reflinkAtomic(base, dst)
	case p.method == MethodQcow2 && !o.RawOnly:
		v.Method, v.Format = MethodQcow2, FormatQcow2
		err = qcow2Overlay(ctx, base, dst)
	default:
		v.Method = MethodCopy
		err = sparseCopyAtomic(base, dst)
	}
	if err != nil {
		return Volume{}, err
	}
	return v, nil
}

// lock serializes work on one base image within this process and, with
// an flock on <name>.lock, across processes.
func (p *Provisioner) lock(name string) (func(), error) {
	unlock := p.locks.Lock(name)
	f, err := os.OpenFile(filepath.Join(p.baseDir(), name+".lock"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("base image lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		unlock()
		return nil, fmt.Errorf("base image lock: %w", err)
	}
	return func() {
		f.Close() // releases the flock
		unlock()
	}, nil
}

// RemoveVolume removes a volume made by Volume (and a qcow2 overlay's
// link to its base). A missing volume is not an error.
func RemoveVolume(path string) error {
	var errs []error
	for _, p := range []string{path, strings.TrimSuffix(path, ".img") + baseSuffix} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DetectFormat tells a volume file's format from its first bytes: qcow2
// files start with "QFI\xfb", everything else is raw.
func DetectFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("volume %s: %w", path, err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("volume %s: %w", path, err)
	}
	if bytes.Equal(magic, []byte("QFI\xfb")) {
		return FormatQcow2, nil
	}
	return FormatRaw, nil
}

// ProbeReflink tells whether dir's filesystem supports FICLONE, by cloning
// a one-block file there.
func ProbeReflink(dir string) (bool, error) {
	src, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false, fmt.Errorf("reflink probe: %w", err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, blockSize)); err != nil {
		return false, fmt.Errorf("reflink probe: %w", err)
	}
	dst, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false, fmt.Errorf("reflink probe: %w", err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil, nil
}

// reflinkAtomic clones src to dst (through a temporary file).
func reflinkAtomic(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("reflink: %w", err)
	}
	defer in.Close()
	return writeAtomic(dst, func(tmp *os.File) error {
		if err := unix.IoctlFileClone(int(tmp.Fd()), int(in.Fd())); err != nil {
			return fmt.Errorf("FICLONE %s: %w", src, err)
		}
		return nil
	})
}

// linkOrClone hard-links src at dst (replacing dst), falling back to a
// reflink or a sparse copy across filesystems.
func linkOrClone(src, dst string) error {
	tmp := dst + ".link-tmp"
	_ = os.Remove(tmp)
	if err := os.Link(src, tmp); err == nil {
		if err := os.Rename(tmp, dst); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("volume %s: %w", dst, err)
		}
		// When dst already was a link of src, rename did nothing.
		_ = os.Remove(tmp)
		return nil
	} else if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EMLINK) {
		return fmt.Errorf("volume %s: %w", dst, err)
	}
	if err := reflinkAtomic(src, dst); err == nil {
		return nil
	}
	return sparseCopyAtomic(src, dst)
}

// qcow2Overlay makes dst a qcow2 overlay backed by a hard link of base in
// dst's folder (named by a relative path), so the VM's folder holds
// everything its volume needs and base may be collected.
func qcow2Overlay(ctx context.Context, base, dst string) error {
	fi, err := os.Stat(base)
	if err != nil {
		return fmt.Errorf("base image: %w", err)
	}
	backing := strings.TrimSuffix(dst, ".img") + baseSuffix
	if err := linkOrClone(base, backing); err != nil {
		return err
	}
	qemuImg, err := exec.LookPath(QemuImg)
	if err != nil {
		return fmt.Errorf("%s not found (install qemu-utils): %w", QemuImg, errdefs.ErrFailedPrecondition)
	}
	return writeAtomic(dst, func(tmp *os.File) error {
		// The size is given, so qemu-img does not open the backing file.
		cmd := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2",
			"-b", filepath.Base(backing), "-F", "raw", tmp.Name(), strconv.FormatInt(fi.Size(), 10))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("qemu-img create: %w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	})
}

// sparseCopyAtomic copies src to dst, skipping its holes: the time taken
// follows the data written in src, not its size.
func sparseCopyAtomic(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	return writeAtomic(dst, func(tmp *os.File) error {
		if err := tmp.Truncate(fi.Size()); err != nil {
			return err
		}
		return copyData(in, tmp, fi.Size())
	})
}

// copyData copies the data extents of in (SEEK_DATA/SEEK_HOLE) to out at
// the same offsets.
func copyData(in, out *os.File, size int64) error {
	ifd, ofd := int(in.Fd()), int(out.Fd())
	off := int64(0)
	for off < size {
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("SEEK_DATA: %w", err)
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE: %w", err)
		}
		for pos := data; pos < hole; {
			r, w := pos, pos
			n, err := unix.CopyFileRange(ifd, &r, ofd, &w, int(hole-pos), 0)
			if err != nil {
				return fmt.Errorf("copy_file_range: %w", err)
			}
			if n == 0 {
				return fmt.Errorf("copy_file_range: short copy at %d: %w", pos, io.ErrUnexpectedEOF)
			}
			pos += int64(n)
		}
		off = hole
	}
	return nil
}
