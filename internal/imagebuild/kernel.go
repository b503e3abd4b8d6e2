package imagebuild

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DefaultKernelPackage is Debian's cloud kernel metapackage: a small
// kernel (virtio, ext4, netfilter, overlayfs) that boots under QEMU microvm.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// kernelRecipe changes whenever the kernel image's content or layout
// changes, so that older cache entries are not used.
const kernelRecipe = "1"

// KernelOptions choose the kernel to build an image of.
type KernelOptions struct {
	// Package is a Debian kernel package: a metapackage such as
	// linux-image-cloud-amd64 (resolved to the versioned package it
	// depends on) or a versioned one such as
	// linux-image-6.1.0-28-cloud-amd64. Default DefaultKernelPackage.
	Package string
	// CacheDir holds the downloaded packages and built layers
	// (CacheDir/kernel/...). Required.
	CacheDir string
}

// Kernel is a built kernel image: its files and its two layers.
type Kernel struct {
	// Release is the kernel release (uname -r), e.g. 6.1.0-28-cloud-amd64.
	Release string `json:"release"`
	// Package and PackageVersion name the Debian package it comes from.
	Package        string `json:"package"`
	PackageVersion string `json:"packageVersion"`
	// Dir is the cache folder of this build.
	Dir string `json:"-"`
	// Boot is the layer with boot/vmlinuz, boot/vmlinux and boot/config.
	Boot Layer `json:"-"`
	// Modules is the layer with usr/lib/modules/<release>/ (modules,
	// depmod's indexes and the config as "config").
	Modules Layer `json:"-"`
}

// BuildKernel returns the kernel image of a Debian kernel package, building
// it into the cache when it is not there. The package is fetched with
// apt-get download (apt's configured mirror). Concurrent builders of the
// same kernel wait for one build.
func BuildKernel(ctx context.Context, o KernelOptions) (*Kernel, error) {
	if o.CacheDir == "" {
		return nil, fmt.Errorf("kernel image: no cache folder: %w", errdefs.ErrInvalidArgument)
	}
	if o.Package == "" {
		o.Package = DefaultKernelPackage
	}
	cache, err := filepath.Abs(filepath.Join(o.CacheDir, "kernel"))
	if err != nil {
		return nil, err
	}
	pkg, err := resolveKernelPackage(ctx, o.Package)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cache, pkg.Name+"_"+strings.ReplaceAll(pkg.Version, ":", "_")+"_r"+kernelRecipe)
	if k, err := loadKernel(dir); err == nil {
		return k, nil
	}
	unlock, err := LockFile(ctx, dir+".lock")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if k, err := loadKernel(dir); err == nil {
		return k, nil
	}
	start := time.Now()
	slog.InfoContext(ctx, "building kernel image", "package", pkg.Name, "version", pkg.Version, "dir", dir)
	if err := buildKernel(ctx, filepath.Join(cache, "debs"), dir, pkg); err != nil {
		return nil, fmt.Errorf("kernel image of %s %s: %w", pkg.Name, pkg.Version, err)
	}
	k, err := loadKernel(dir)
	if err != nil {
		return nil, err
	}
	slog.InfoContext(ctx, "built kernel image", "release", k.Release, "took", time.Since(start).Round(time.Millisecond))
	return k, nil
}

// resolveKernelPackage follows a metapackage (linux-image-cloud-amd64) to
// the versioned kernel package it depends on.
func resolveKernelPackage(ctx context.Context, name string) (aptPackage, error) {
	p, err := aptShow(ctx, name)
	if err != nil {
		return p, err
	}
	for _, d := range strings.Split(p.Depends, ",") {
		f := strings.Fields(d)
		if len(f) > 0 && strings.HasPrefix(f[0], "linux-image-") && f[0] != p.Name {
			return aptShow(ctx, f[0])
		}
	}
	return p, nil
}

func loadKernel(dir string) (*Kernel, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if err != nil {
		return nil, err
	}
	k := &Kernel{Dir: dir}
	if err := json.Unmarshal(b, k); err != nil {
		return nil, err
	}
	if k.Boot, err = loadLayer(dir, "boot"); err != nil {
		return nil, err
	}
	if k.Modules, err = loadLayer(dir, "modules"); err != nil {
		return nil, err
	}
	return k, nil
}

func buildKernel(ctx context.Context, debs, dir string, pkg aptPackage) error {
	deb, err := aptDownload(ctx, debs, pkg)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	x := filepath.Join(dir, "x")
	defer os.RemoveAll(x)
	if err := os.MkdirAll(x, 0o755); err != nil {
		return err
	}
	if _, err := run(ctx, "", "dpkg-deb", "-x", deb, x); err != nil {
		return err
	}
	// The package's own layout: boot/vmlinuz-<release>, boot/config-<release>
	// and lib/modules/<release>/ (or usr/lib/modules on newer Debian).
	found, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	if len(found) != 1 {
		return fmt.Errorf("package %s holds %d boot/vmlinuz-* files, want 1: %w", pkg.Name, len(found), errdefs.ErrInvalidArgument)
	}
	release := strings.TrimPrefix(filepath.Base(found[0]), "vmlinuz-")
	modules := ""
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		if fi, err := os.Stat(filepath.Join(x, d, release)); err == nil && fi.IsDir() {
			modules = filepath.Join(x, d, release)
			if d == "usr/lib/modules" {
				// depmod -b looks under lib/modules.
				if err := os.Symlink("usr/lib", filepath.Join(x, "lib")); err != nil && !os.IsExist(err) {
					return err
				}
			}
			break
		}
	}
	if modules == "" {
		return fmt.Errorf("package %s has no modules folder for %s: %w", pkg.Name, release, errdefs.ErrInvalidArgument)
	}
	vmlinuz, err := os.ReadFile(found[0])
	if err != nil {
		return err
	}
	vmlinux, err := ExtractVmlinux(vmlinuz)
	if err != nil {
		return fmt.Errorf("%s: %w", found[0], err)
	}
	config, err := os.ReadFile(filepath.Join(x, "boot", "config-"+release))
	if err != nil {
		return fmt.Errorf("package %s: %w", pkg.Name, err)
	}
	// The package ships no module indexes (its postinst makes them): make
	// them now, so modprobe works in any root filesystem the layer lands in.
	if _, err := run(ctx, "", "depmod", "-b", x, release); err != nil {
		return fmt.Errorf("depmod: %w", err)
	}
	// kubeadm's system check (and others) read the config from
	// /usr/lib/modules/<release>/config when /boot has none.
	if err := os.WriteFile(filepath.Join(modules, "config"), config, 0o644); err != nil {
		return err
	}

	boot := files{}
	boot.add(file{name: VmlinuzPath, mode: 0o644, data: vmlinuz})
	boot.add(file{name: VmlinuxPath, mode: 0o644, data: vmlinux})
	boot.add(file{name: ConfigPath, mode: 0o644, data: config})
	if _, err := writeLayer(dir, "boot", "liquidmetal kernel "+release+": boot/vmlinuz, boot/vmlinux, boot/config", boot.writeTar); err != nil {
		return err
	}
	prefix := ModulesDir + "/" + release
	_, err = writeLayer(dir, "modules", "liquidmetal kernel "+release+": "+prefix, func(tw *tar.Writer) error {
		// The folders above the release folder, then the tree.
		parents := files{}
		parents.add(file{name: prefix, mode: fs.ModeDir | 0o755})
		delete(parents, prefix)
		if err := parents.writeTar(tw); err != nil {
			return err
		}
		return tarTree(tw, modules, treeOptions{prefix: prefix, fixedTimes: true})
	})
	if err != nil {
		return err
	}
	k := Kernel{Release: release, Package: pkg.Name, PackageVersion: pkg.Version}
	b, _ := json.MarshalIndent(k, "", "  ")
	return writeFileAtomic(filepath.Join(dir, "kernel.json"), append(b, '\n'), 0o644)
}

// Image is the kernel image: the boot layer, then the modules layer.
func (k *Kernel) Image() (v1.Image, error) {
	return newImage([]Layer{k.Boot, k.Modules}, map[string]string{
		LabelKind:                              KindKernel,
		LabelKernelRelease:                     k.Release,
		LabelKernelPackage:                     k.Package + "=" + k.PackageVersion,
		"org.opencontainers.image.title":       "Liquid Metal kernel " + k.Release,
		"org.opencontainers.image.description": "Debian " + k.Package + " " + k.PackageVersion + ": boot/vmlinuz, boot/vmlinux, boot/config and " + ModulesDir + "/" + k.Release,
	}, nil)
}

// contentKey hashes the parts of a cache key.
func contentKey(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s\n", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}
