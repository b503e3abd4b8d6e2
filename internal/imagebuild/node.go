package imagebuild

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// DefaultSuite is the Debian release of the node OS.
const DefaultSuite = "bookworm"

// DefaultMirror is used when apt has no source for the suite.
const DefaultMirror = "http://deb.debian.org/debian"

// Recipes: change one whenever what that part of the image holds changes,
// so that older cache entries are not used.
const (
	baseRecipe = "2"
	nodeRecipe = "1"
)

// BasePackages are installed by debootstrap on top of its minbase variant:
// the init system, cloud-init (which configures networking through
// ifupdown, Debian's default, and installs the users' SSH keys), an SSH
// server (host keys made per VM at first boot), and the node's container
// runtime. debootstrap resolves no virtual packages, so providers of the
// ones these depend on are named too (python3-cffi-backend for
// python3-cryptography, via cloud-init).
var BasePackages = []string{
	"systemd", "systemd-sysv", "udev", "dbus", "kmod", "procps",
	"iproute2", "ifupdown", "iptables", "ca-certificates", "openssh-server",
	"cloud-init", "python3-cffi-backend",
	"containerd", "runc",
}

// labelledPackages are the packages whose versions the image's labels name.
var labelledPackages = []string{"systemd", "cloud-init", "containerd", "runc"}

// maskedUnits start at boot in a stock Debian system but have no use in a
// microVM that lives as long as its Kubernetes node (and cost boot time
// under emulation): periodic apt, e2scrub and fstrim jobs, and the login
// prompt on the first virtual terminal, which microVMs do not have (the
// serial console keeps its getty).
var maskedUnits = []string{
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
	"e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
	"getty@tty1.service",
}

// kubeBinaries are the Kubernetes programs of the node image.
var kubeBinaries = []string{"kubelet", "kubeadm", "kubectl"}

// nodeFS holds the node layer's configuration files, at their paths in the
// image; *.tmpl files are templates of nodeParams.
//
//go:embed nodefs
var nodeFS embed.FS

// nodeParams fill the templates of nodeFS.
type nodeParams struct {
	KubernetesVersion string
	SandboxImage      string
}

// NodeOptions describe the node OS image.
type NodeOptions struct {
	// CacheDir holds the debootstrap tarball and the layers
	// (CacheDir/node/...). Required.
	CacheDir string
	// Suite is the Debian release (default DefaultSuite); Mirror the
	// Debian mirror (default: the one apt uses for the suite).
	Suite  string
	Mirror string
	// ExtraPackages are installed with BasePackages.
	ExtraPackages []string
	// KubeBinDir holds kubelet, kubeadm and kubectl, all of one version
	// (hack/build-kube-node.sh builds them from the Go module proxy).
	KubeBinDir string
	// Kernel is the kernel the image boots with: its modules layer is
	// part of the image. Required.
	Kernel *Kernel
	// Refresh rebuilds the debootstrap tarball even when one is cached
	// (to pick up the mirror's newer packages).
	Refresh bool
}

// Node is a built node OS image.
type Node struct {
	Suite             string
	Mirror            string
	KubernetesVersion string
	Kernel            *Kernel
	// Packages are the installed Debian packages and their versions.
	Packages map[string]string
	// Base is the debootstrap root filesystem; Layer is the Kubernetes
	// layer (binaries, units, settings). The image is Base,
	// Kernel.Modules, Layer.
	Base  Layer
	Layer Layer
}

// baseInfo is base.json, written last into a base cache folder.
type baseInfo struct {
	Suite    string            `json:"suite"`
	Mirror   string            `json:"mirror"`
	Include  []string          `json:"include"`
	Packages map[string]string `json:"packages"`
	Built    time.Time         `json:"built"`
}

// BuildNode returns the node OS image, building what is not cached: the
// debootstrap root filesystem (minutes; cached by suite, mirror and
// package list) and the Kubernetes layer (seconds; cached by content).
// It runs debootstrap, so it needs root.
func BuildNode(ctx context.Context, o NodeOptions) (*Node, error) {
	if o.CacheDir == "" || o.Kernel == nil || o.KubeBinDir == "" {
		return nil, fmt.Errorf("node image: cache folder, kernel and Kubernetes binaries are required: %w", errdefs.ErrInvalidArgument)
	}
	if o.Suite == "" {
		o.Suite = DefaultSuite
	}
	if o.Mirror == "" {
		o.Mirror = aptMirror(ctx, o.Suite)
	}
	kubeVersion, err := KubeVersion(ctx, o.KubeBinDir)
	if err != nil {
		return nil, err
	}
	cache, err := filepath.Abs(filepath.Join(o.CacheDir, "node"))
	if err != nil {
		return nil, err
	}
	include := slices.Concat(BasePackages, o.ExtraPackages)
	sort.Strings(include)
	include = slices.Compact(include)
	base, info, err := ensureBase(ctx, filepath.Join(cache, "base-"+o.Suite+"-"+contentKey(baseRecipe, o.Suite, o.Mirror, strings.Join(include, ","))), o.Suite, o.Mirror, include, o.Refresh)
	if err != nil {
		return nil, err
	}
	layer, err := ensureNodeLayer(ctx, cache, o.KubeBinDir, nodeParams{KubernetesVersion: kubeVersion})
	if err != nil {
		return nil, err
	}
	return &Node{
		Suite: o.Suite, Mirror: o.Mirror, KubernetesVersion: kubeVersion, Kernel: o.Kernel,
		Packages: info.Packages, Base: base, Layer: layer,
	}, nil
}

// Image is the node OS image: the root filesystem, the kernel's modules,
// the Kubernetes layer.
func (n *Node) Image() (v1.Image, error) {
	labels := map[string]string{
		LabelKind:                              KindNode,
		LabelKubernetesVersion:                 n.KubernetesVersion,
		LabelKernelRelease:                     n.Kernel.Release,
		LabelKernelPackage:                     n.Kernel.Package + "=" + n.Kernel.PackageVersion,
		LabelDebianSuite:                       n.Suite,
		"org.opencontainers.image.title":       "Liquid Metal node " + n.KubernetesVersion,
		"org.opencontainers.image.description": "Debian " + n.Suite + " with systemd, cloud-init (NoCloud), containerd, runc and kubelet/kubeadm/kubectl " + n.KubernetesVersion + " for kernel " + n.Kernel.Release,
	}
	for _, p := range labelledPackages {
		if v := n.Packages[p]; v != "" {
			labels[LabelPackagePrefix+p] = v
		}
	}
	return newImage([]Layer{n.Base, n.Kernel.Modules, n.Layer}, labels, []string{"/sbin/init"})
}

// KubeVersion checks that dir holds kubelet, kubeadm and kubectl of one
// version, and returns it (e.g. v1.34.4).
func KubeVersion(ctx context.Context, dir string) (string, error) {
	versions := map[string]string{}
	for _, b := range kubeBinaries {
		p := filepath.Join(dir, b)
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return "", fmt.Errorf("%s is not an executable (build it with hack/build-kube-node.sh): %w", p, errdefs.ErrNotFound)
		}
		var args []string
		switch b {
		case "kubelet":
			args = []string{"--version"} // "Kubernetes v1.34.4"
		case "kubeadm":
			args = []string{"version", "-o", "short"}
		case "kubectl":
			args = []string{"version", "--client", "-o", "json"}
		}
		out, err := run(ctx, "", p, args...)
		if err != nil {
			return "", err
		}
		v := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "Kubernetes "))
		if b == "kubectl" {
			var cv struct {
				ClientVersion struct {
					GitVersion string `json:"gitVersion"`
				} `json:"clientVersion"`
			}
			if err := json.Unmarshal([]byte(out), &cv); err != nil {
				return "", fmt.Errorf("kubectl version: %w", err)
			}
			v = cv.ClientVersion.GitVersion
		}
		if !strings.HasPrefix(v, "v1.") {
			return "", fmt.Errorf("%s reports version %q (not built with a version stamp?): %w", p, v, errdefs.ErrInvalidArgument)
		}
		versions[b] = v
	}
	if versions["kubelet"] != versions["kubeadm"] || versions["kubeadm"] != versions["kubectl"] {
		return "", fmt.Errorf("kubelet %s, kubeadm %s and kubectl %s differ: %w", versions["kubelet"], versions["kubeadm"], versions["kubectl"], errdefs.ErrInvalidArgument)
	}
	return versions["kubeadm"], nil
}

// aptMirror is the mirror apt fetches the suite's main component from,
// else DefaultMirror.
func aptMirror(ctx context.Context, suite string) string {
	out, err := run(ctx, "", "apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE) $(COMPONENT)", "Created-By: Packages")
	if err == nil {
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[1] == suite && f[2] == "main" {
				return strings.TrimSuffix(f[0], "/")
			}
		}
	}
	return DefaultMirror
}

// ensureBase returns the cached debootstrap layer of dir, making it first
// when missing (or when refresh).
func ensureBase(ctx context.Context, dir, suite, mirror string, include []string, refresh bool) (Layer, baseInfo, error) {
	load := func() (Layer, baseInfo, error) {
		var info baseInfo
		b, err := os.ReadFile(filepath.Join(dir, "base.json"))
		if err != nil {
			return Layer{}, info, err
		}
		if err := json.Unmarshal(b, &info); err != nil {
			return Layer{}, info, err
		}
		l, err := loadLayer(dir, "rootfs")
		return l, info, err
	}
	if !refresh {
		if l, info, err := load(); err == nil {
			return l, info, nil
		}
	}
	unlock, err := LockFile(ctx, dir+".lock")
	if err != nil {
		return Layer{}, baseInfo{}, err
	}
	defer unlock()
	if !refresh {
		if l, info, err := load(); err == nil { // built while we waited
			return l, info, nil
		}
	}
	start := time.Now()
	slog.InfoContext(ctx, "building the node root filesystem with debootstrap (minutes)", "suite", suite, "mirror", mirror, "dir", dir)
	if err := buildBase(ctx, dir, suite, mirror, include); err != nil {
		return Layer{}, baseInfo{}, fmt.Errorf("node root filesystem: %w", err)
	}
	l, info, err := load()
	if err != nil {
		return Layer{}, baseInfo{}, err
	}
	slog.InfoContext(ctx, "built the node root filesystem", "layer", l.Digest.String(), "bytes", l.Size, "took", time.Since(start).Round(time.Second))
	return l, info, nil
}

func buildBase(ctx context.Context, dir, suite, mirror string, include []string) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("debootstrap needs root: %w", errdefs.ErrFailedPrecondition)
	}
	debootstrap, err := sbin("debootstrap")
	if err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, "base.json"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	work := dir + ".work"
	if err := removeTree(work); err != nil {
		return err
	}
	defer func() {
		if rerr := removeTree(work); rerr != nil && err == nil {
			err = rerr
		}
	}()
	root := filepath.Join(work, "rootfs")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "debootstrap.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, debootstrap, "--variant=minbase", "--merged-usr",
		"--include="+strings.Join(include, ","), suite, root, mirror)
	cmd.Stdout, cmd.Stderr = logf, logf
	// debootstrap runs dpkg and maintainer scripts: end them all together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 30 * time.Second
	// Package scripts must not ask questions.
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8")
	runErr := cmd.Run()
	logf.Close()
	if runErr != nil {
		b, _ := os.ReadFile(logPath)
		detail := lastLines(string(b), 15)
		if d, derr := os.ReadFile(filepath.Join(root, "debootstrap", "debootstrap.log")); derr == nil {
			detail += "\n" + lastLines(string(d), 25)
		}
		return fmt.Errorf("debootstrap %s from %s: %w:\n%s", suite, mirror, runErr, detail)
	}
	// debootstrap unmounts what it mounted; make sure before reading.
	if err := unmountUnder(root); err != nil {
		return err
	}
	if err := cleanRootfs(root); err != nil {
		return fmt.Errorf("cleaning the root filesystem: %w", err)
	}
	pkgs, err := installedPackages(ctx, root)
	if err != nil {
		return err
	}
	for _, p := range include {
		if pkgs[p] == "" {
			return fmt.Errorf("debootstrap did not install %s: %w", p, errdefs.ErrNotFound)
		}
	}
	if _, err := writeLayer(dir, "rootfs", "debootstrap --variant=minbase "+suite+" "+mirror+" +"+strings.Join(include, ","), func(tw *tar.Writer) error {
		return tarTree(tw, root, treeOptions{})
	}); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(baseInfo{Suite: suite, Mirror: mirror, Include: include, Packages: pkgs, Built: time.Now().UTC()}, "", "  ")
	return writeFileAtomic(filepath.Join(dir, "base.json"), append(b, '\n'), 0o644)
}

// cleanRootfs removes what belongs to the machine that ran debootstrap or
// to one boot, so that every VM starts as a first boot of its own: a
// machine id (systemd makes one per VM from an empty file), SSH host keys,
// the host's resolv.conf and name, runtime folders, logs, apt's lists and
// caches.
func cleanRootfs(root string) error {
	at := func(p string) string { return filepath.Join(root, filepath.FromSlash(p)) }
	for _, d := range []string{"run", "tmp", "var/tmp", "dev", "var/log/apt"} {
		if err := emptyDir(at(d)); err != nil {
			return err
		}
	}
	caches, _ := filepath.Glob(at("var/cache/apt/*.bin"))
	debs, _ := filepath.Glob(at("var/cache/apt/archives/*.deb"))
	for _, f := range append(caches, debs...) {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	// apt's lists are large and stale by the time a node runs.
	lists, _ := os.ReadDir(at("var/lib/apt/lists"))
	for _, e := range lists {
		if e.Type().IsRegular() && e.Name() != "lock" {
			if err := os.Remove(at("var/lib/apt/lists/" + e.Name())); err != nil {
				return err
			}
		}
	}
	for _, p := range []string{"var/log/bootstrap.log", "var/log/dpkg.log", "var/log/alternatives.log",
		"var/cache/ldconfig/aux-cache", "var/cache/debconf/config.dat-old", "var/cache/debconf/templates.dat-old",
		"var/lib/dpkg/status-old", "var/lib/dpkg/diversions-old", "var/lib/systemd/random-seed",
		"var/lib/dbus/machine-id"} {
		if err := os.Remove(at(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	// SSH host keys are made per VM (cloud-init's ssh module), never shared.
	keys, _ := filepath.Glob(at("etc/ssh/ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return err
		}
	}
	for _, p := range []string{"var/log/btmp", "var/log/wtmp", "var/log/lastlog", "var/log/faillog"} {
		if err := os.Truncate(at(p), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	for p, content := range map[string]string{
		// Empty: systemd makes a machine id at each VM's first boot and
		// keeps it (kubeadm nodes need distinct ones); not a first boot
		// in systemd's sense, so no systemd-firstboot prompt.
		"etc/machine-id":  "",
		"etc/resolv.conf": "",
		"etc/hostname":    "localhost\n",
	} {
		if err := os.Remove(at(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.WriteFile(at(p), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if err := os.Chmod(at("etc/machine-id"), 0o444); err != nil {
		return err
	}
	return os.Symlink("/etc/machine-id", at("var/lib/dbus/machine-id"))
}

// emptyDir removes a folder's content, keeping the folder.
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// installedPackages reads the root filesystem's dpkg database.
func installedPackages(ctx context.Context, root string) (map[string]string, error) {
	out, err := run(ctx, "", "dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"), "-W", "-f", "${db:Status-Abbrev} ${Package} ${Version}\n")
	if err != nil {
		return nil, err
	}
	pkgs := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "ii" {
			pkgs[f[1]] = f[2]
		}
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("no package is installed in %s: %w", root, errdefs.ErrNotFound)
	}
	return pkgs, nil
}

// sbin finds a system program in PATH or the sbin folders.
func sbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if fi, err := os.Stat(filepath.Join(d, name)); err == nil && fi.Mode().IsRegular() {
			return filepath.Join(d, name), nil
		}
	}
	return "", fmt.Errorf("%s is not installed (hack/install-deps.sh installs it): %w", name, errdefs.ErrFailedPrecondition)
}

// unmountUnder lazily unmounts everything mounted at or below dir, deepest
// first, and fails when something stays mounted.
func unmountUnder(dir string) error {
	list := func() ([]string, error) {
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return nil, err
		}
		var ms []string
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) < 5 {
				continue
			}
			mp := unescapeMountPath(f[4])
			if mp == dir || strings.HasPrefix(mp, dir+"/") {
				ms = append(ms, mp)
			}
		}
		sort.Slice(ms, func(i, j int) bool { return len(ms[i]) > len(ms[j]) })
		return ms, nil
	}
	ms, err := list()
	if err != nil {
		return err
	}
	for _, m := range ms {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", m, err)
		}
	}
	if ms, err = list(); err != nil {
		return err
	}
	if len(ms) > 0 {
		return fmt.Errorf("still mounted under %s: %v: %w", dir, ms, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeTree removes a folder after making sure nothing is mounted in it
// (a chroot's /proc or /dev must never be deleted through).
func removeTree(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := unmountUnder(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// ensureNodeLayer returns the Kubernetes layer for the binaries in kubeDir
// and the parameters (the sandbox image is filled in), making it when its
// content key is not cached.
func ensureNodeLayer(ctx context.Context, cache, kubeDir string, p nodeParams) (Layer, error) {
	var err error
	if p.SandboxImage, err = sandboxImage(ctx, kubeDir, p.KubernetesVersion); err != nil {
		return Layer{}, err
	}
	kubeVersion := p.KubernetesVersion
	fs_, err := nodeFiles(kubeDir, p)
	if err != nil {
		return Layer{}, err
	}
	key, err := fs_.contentKey()
	if err != nil {
		return Layer{}, err
	}
	dir := filepath.Join(cache, "layer-"+kubeVersion+"-"+contentKey(nodeRecipe, key))
	if l, err := loadLayer(dir, "node"); err == nil {
		return l, nil
	}
	unlock, err := LockFile(ctx, dir+".lock")
	if err != nil {
		return Layer{}, err
	}
	defer unlock()
	if l, err := loadLayer(dir, "node"); err == nil {
		return l, nil
	}
	return writeLayer(dir, "node", "liquidmetal node: kubelet, kubeadm, kubectl "+kubeVersion+", units and settings", fs_.writeTar)
}

// sandboxImage asks kubeadm which pause image its Kubernetes version uses.
func sandboxImage(ctx context.Context, kubeDir, kubeVersion string) (string, error) {
	out, err := run(ctx, "", filepath.Join(kubeDir, "kubeadm"), "config", "images", "list", "--kubernetes-version", kubeVersion)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Fields(out) {
		if strings.Contains(l, "/pause:") {
			return l, nil
		}
	}
	return "", fmt.Errorf("kubeadm %s names no pause image: %w", kubeVersion, errdefs.ErrNotFound)
}

// nodeFiles is the content of the Kubernetes layer. Every path is under
// etc/, opt/ or usr/: never under the links of a merged-/usr root (bin,
// sbin, lib), which a folder entry in a layer would replace.
func nodeFiles(kubeDir string, p nodeParams) (files, error) {
	out := files{}
	err := fs.WalkDir(nodeFS, "nodefs", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := nodeFS.ReadFile(name)
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(name, "nodefs/")
		if strings.HasSuffix(rel, ".tmpl") {
			t, err := template.New(rel).Option("missingkey=error").Parse(string(b))
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := t.Execute(&buf, p); err != nil {
				return err
			}
			rel, b = strings.TrimSuffix(rel, ".tmpl"), buf.Bytes()
		}
		out.add(file{name: rel, mode: 0o644, data: b})
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, b := range kubeBinaries {
		out.add(file{name: "usr/bin/" + b, mode: 0o755, src: filepath.Join(kubeDir, b)})
	}
	// systemctl enable kubelet; systemctl mask <unit>...
	out.add(file{name: "etc/systemd/system/multi-user.target.wants/kubelet.service", mode: fs.ModeSymlink | 0o777, link: "/usr/lib/systemd/system/kubelet.service"})
	for _, u := range maskedUnits {
		out.add(file{name: "etc/systemd/system/" + u, mode: fs.ModeSymlink | 0o777, link: "/dev/null"})
	}
	// Where CNI installers put plugins (containerd's config points there).
	out.add(file{name: "opt/cni/bin", mode: fs.ModeDir | 0o755})
	for name := range out {
		top, _, _ := strings.Cut(name, "/")
		if top != "etc" && top != "opt" && top != "usr" {
			return nil, fmt.Errorf("node layer path %s is outside etc/, opt/ and usr/: %w", name, errdefs.ErrInvalidArgument)
		}
	}
	return out, nil
}

// contentKey hashes every entry (path, mode, link, content).
func (fs_ files) contentKey() (string, error) {
	names := make([]string, 0, len(fs_))
	for n := range fs_ {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		f := fs_[n]
		fmt.Fprintf(h, "%s\x00%o\x00%s\x00", path.Clean(f.name), f.mode, f.link)
		switch {
		case f.src != "":
			fh, err := os.Open(f.src)
			if err != nil {
				return "", err
			}
			_, err = io.Copy(h, fh)
			fh.Close()
			if err != nil {
				return "", err
			}
		default:
			h.Write(f.data)
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
