package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"
)

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestKernelImage builds the image of Debian's cloud kernel twice, in two
// caches, from the real package: the builds agree byte for byte, a warm
// build reuses the cache, and the layers hold what the layout contract
// (docs/images.md) promises.
func TestKernelImage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cache := t.TempDir()
	k1, err := BuildKernel(ctx, KernelOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	k2, err := BuildKernel(ctx, KernelOptions{CacheDir: t.TempDir(), Package: k1.Package})
	if err != nil {
		t.Fatal(err)
	}
	if k1.Package == DefaultKernelPackage || !strings.HasPrefix(k1.Package, "linux-image-") {
		t.Errorf("the metapackage resolved to %q, want a versioned linux-image package", k1.Package)
	}
	if k1.Release == "" || k1.Release != k2.Release || k1.PackageVersion != k2.PackageVersion {
		t.Fatalf("builds of one package disagree: %+v vs %+v", k1, k2)
	}
	img1, err := k1.Image()
	if err != nil {
		t.Fatal(err)
	}
	img2, err := k2.Image()
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img1.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 || k1.Boot.Digest != k2.Boot.Digest || k1.Modules.Digest != k2.Modules.Digest {
		t.Errorf("rebuild is not reproducible: image %v vs %v, boot %v vs %v, modules %v vs %v",
			d1, d2, k1.Boot.Digest, k2.Boot.Digest, k1.Modules.Digest, k2.Modules.Digest)
	}

	// Warm: the cache answers without writing.
	before, _ := os.Stat(k1.Boot.File)
	start := time.Now()
	k3, err := BuildKernel(ctx, KernelOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(k3.Boot.File)
	if k3.Boot.Digest != k1.Boot.Digest || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("warm build rebuilt the layers (%v)", k3.Boot.Digest)
	}
	t.Logf("warm kernel build: %v", time.Since(start).Round(time.Millisecond))

	// The boot layer: the bzImage, its ELF, the config.
	hs, data, order := readTar(t, k1.Boot.File)
	if want := []string{"boot/", ConfigPath, VmlinuxPath, VmlinuzPath}; !equalStrings(order, want) {
		t.Errorf("boot layer holds %v, want %v", order, want)
	}
	for name, h := range hs {
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) {
			t.Errorf("%s: owner %d:%d time %v, want root's and the epoch", name, h.Uid, h.Gid, h.ModTime)
		}
	}
	if string(data[VmlinuzPath][0x202:0x206]) != "HdrS" {
		t.Errorf("%s is not a bzImage", VmlinuzPath)
	}
	f, err := elf.NewFile(bytes.NewReader(data[VmlinuxPath]))
	if err != nil {
		t.Fatalf("%s: %v", VmlinuxPath, err)
	}
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("%s is %v %v, want an x86-64 executable", VmlinuxPath, f.Machine, f.Type)
	}
	// The kernel's banner names its release: the ELF is this kernel.
	if !bytes.Contains(data[VmlinuxPath], []byte("Linux version "+k1.Release+" ")) {
		t.Errorf("%s has no banner of %s", VmlinuxPath, k1.Release)
	}
	if !bytes.Contains(data[ConfigPath], []byte("\nCONFIG_VIRTIO_BLK=")) {
		t.Errorf("%s is not a kernel config", ConfigPath)
	}

	// The modules layer: only the release folder, with depmod's indexes
	// and the config.
	prefix := ModulesDir + "/" + k1.Release + "/"
	f2, err := os.Open(k1.Modules.File)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	mhs, mdata, _ := readTarGz(t, f2, func(n string) bool {
		return strings.HasSuffix(n, "/modules.dep") || strings.HasSuffix(n, "/config")
	})
	for name, h := range mhs {
		if !strings.HasPrefix(name, prefix) && name != "usr/" && name != "usr/lib/" && name != ModulesDir+"/" {
			t.Errorf("modules layer entry %s outside %s", name, prefix)
		}
		if h.Typeflag == tar.TypeDir && h.Mode != 0o755 {
			t.Errorf("%s: folder mode %o", name, h.Mode)
		}
	}
	dep := string(mdata[prefix+"modules.dep"])
	for _, m := range []string{"kernel/net/bridge/br_netfilter.ko:", "kernel/fs/overlayfs/overlay.ko:"} {
		if !strings.Contains(dep, m) {
			t.Errorf("modules.dep has no %s line", m)
		}
		if mhs[prefix+strings.TrimSuffix(m, ":")] == nil {
			t.Errorf("modules layer has no %s", strings.TrimSuffix(m, ":"))
		}
	}
	if !bytes.Equal(mdata[prefix+"config"], data[ConfigPath]) {
		t.Errorf("%sconfig differs from %s", prefix, ConfigPath)
	}

	cf, err := img1.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.Labels[LabelKind] != KindKernel || cf.Config.Labels[LabelKernelRelease] != k1.Release || cf.Architecture != "amd64" {
		t.Errorf("image config: %+v", cf.Config.Labels)
	}
}
