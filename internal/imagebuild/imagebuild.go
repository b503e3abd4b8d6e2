// Package imagebuild builds the OCI images a Liquid Metal microVM boots,
// from Debian packages and without a container engine:
//
//   - the kernel image (BuildKernel): boot/vmlinuz (the bzImage QEMU
//     boots), boot/vmlinux (the ELF Firecracker and Cloud Hypervisor boot)
//     and boot/config in one layer, and the kernel's modules under
//     usr/lib/modules/<release>/ in a second layer that other images reuse;
//   - the node OS image (BuildNode): a Debian root filesystem made with
//     debootstrap (systemd, cloud-init set to NoCloud, containerd, runc),
//     a layer with kubelet, kubeadm and kubectl and their systemd units and
//     the kernel settings Kubernetes needs, and the kernel's modules layer.
//
// Layers are written reproducibly (sorted entries, fixed times, plain gzip)
// and cached with their digests under a cache folder, so a rebuild gives
// the same digests and a warm build reads no layer data. Push sends an
// image to any registry with docker-style credentials. docs/images.md is
// the layout contract the rest of the project relies on.
package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// Paths inside the images (see docs/images.md).
const (
	// VmlinuzPath is the compressed kernel (bzImage).
	VmlinuzPath = "boot/vmlinuz"
	// VmlinuxPath is the uncompressed ELF kernel.
	VmlinuxPath = "boot/vmlinux"
	// ConfigPath is the kernel's build configuration.
	ConfigPath = "boot/config"
	// ModulesDir holds the modules, one folder per kernel release. It is
	// the merged-/usr path (/lib is a link to usr/lib on Debian 12), so the
	// layer can be stacked on a root filesystem without replacing /lib.
	ModulesDir = "usr/lib/modules"
)

// Labels of the images' configurations.
const (
	LabelKind              = "io.liquidmetal.image.kind" // "kernel" or "node"
	LabelKernelRelease     = "io.liquidmetal.kernel.release"
	LabelKernelPackage     = "io.liquidmetal.kernel.package" // Debian name=version
	LabelKubernetesVersion = "io.liquidmetal.kubernetes.version"
	LabelDebianSuite       = "io.liquidmetal.debian.suite"
	// LabelPackagePrefix + a Debian package name is that package's version
	// in the node image (systemd, cloud-init, containerd, runc).
	LabelPackagePrefix = "io.liquidmetal.debian.package."
)

// Image kinds, the values of LabelKind.
const (
	KindKernel = "kernel"
	KindNode   = "node"
)

// run runs a command and returns its standard output; the error carries
// the standard error.
func run(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLines(stderr.String(), 20))
	}
	return stdout.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func writeFileAtomic(path string, b []byte, perm fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// LockFile takes an exclusive flock on path (made with its folder when
// missing), waiting until ctx ends, so that concurrent builders (other
// processes too) make a cache entry once. It returns the unlock function.
func LockFile(ctx context.Context, path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// aptPackage is one Debian package as apt-cache describes it.
type aptPackage struct {
	Name    string
	Version string
	Depends string
}

// aptShow describes the candidate version of pkg.
func aptShow(ctx context.Context, pkg string) (aptPackage, error) {
	out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return aptPackage{}, fmt.Errorf("%w (is the package name right and apt-get update done?)", err)
	}
	p := aptPackage{}
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			p.Name = v
		case "Version":
			p.Version = v
		case "Depends":
			p.Depends = v
		}
	}
	if p.Name == "" || p.Version == "" {
		return p, fmt.Errorf("apt-cache has no candidate of %s: %w", pkg, errdefs.ErrNotFound)
	}
	return p, nil
}

// aptDownload fetches pkg=version into dir unless that .deb is there, and
// returns the .deb's path.
func aptDownload(ctx context.Context, dir string, p aptPackage) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// apt escapes the epoch colon in file names.
	want := filepath.Join(dir, p.Name+"_"+strings.ReplaceAll(p.Version, ":", "%3a")+"_")
	find := func() string {
		m, _ := filepath.Glob(want + "*.deb")
		if len(m) == 1 {
			return m[0]
		}
		return ""
	}
	if f := find(); f != "" {
		return f, nil
	}
	// As root apt drops to the _apt user unless told otherwise; a private
	// cache folder is not readable by it.
	if _, err := run(ctx, dir, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", p.Name+"="+p.Version); err != nil {
		return "", err
	}
	if f := find(); f != "" {
		return f, nil
	}
	return "", fmt.Errorf("apt-get download %s=%s left no .deb in %s: %w", p.Name, p.Version, dir, errdefs.ErrNotFound)
}
