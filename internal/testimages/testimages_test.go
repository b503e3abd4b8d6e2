package testimages

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// fakeELF is an x86-64 executable ELF header followed by n bytes of
// half-random, half-repetitive data.
func fakeELF(t *testing.T, n int) []byte {
	t.Helper()
	h := make([]byte, 64)
	copy(h, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	binary.LittleEndian.PutUint16(h[16:], 2)  // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], 62) // EM_X86_64
	binary.LittleEndian.PutUint32(h[20:], 1)
	binary.LittleEndian.PutUint16(h[52:], 64) // ehsize
	binary.LittleEndian.PutUint16(h[54:], 56)
	binary.LittleEndian.PutUint16(h[58:], 64)
	body := make([]byte, n)
	if _, err := rand.Read(body[:n/2]); err != nil {
		t.Fatal(err)
	}
	for i := n / 2; i < n; i++ {
		body[i] = byte(i % 251)
	}
	return append(h, body...)
}

// fakeBzImage wraps a compressed payload in a minimal boot-protocol 2.15
// setup header (one setup sector).
func fakeBzImage(payload []byte) []byte {
	img := make([]byte, 1024)
	img[0x1f1] = 1
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x020f)
	binary.LittleEndian.PutUint32(img[0x248:], 0)
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)))
	return append(img, payload...)
}

func withSize(b []byte, n int) []byte {
	return binary.LittleEndian.AppendUint32(b, uint32(n))
}

func lz4Legacy(t *testing.T, src []byte) []byte {
	t.Helper()
	out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	for len(src) > 0 {
		chunk := src[:min(len(src), lz4LegacyChunk)]
		src = src[len(chunk):]
		dst := make([]byte, lz4.CompressBlockBound(len(chunk)))
		n, err := lz4.CompressBlock(chunk, dst, nil)
		if err != nil {
			t.Fatal(err)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(n))
		out = append(out, dst[:n]...)
	}
	return out
}

func TestExtractVmlinuxFormats(t *testing.T) {
	compressors := map[string]func(t *testing.T, b []byte) []byte{
		"gzip": func(t *testing.T, b []byte) []byte {
			var buf bytes.Buffer
			w := gzip.NewWriter(&buf)
			w.Write(b)
			w.Close()
			return buf.Bytes() // the gzip trailer ends with the size
		},
		"xz": func(t *testing.T, b []byte) []byte {
			var buf bytes.Buffer
			w, err := xz.NewWriter(&buf)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(b)
			w.Close()
			return withSize(buf.Bytes(), len(b))
		},
		"zstd": func(t *testing.T, b []byte) []byte {
			enc, err := zstd.NewWriter(nil)
			if err != nil {
				t.Fatal(err)
			}
			return withSize(enc.EncodeAll(b, nil), len(b))
		},
		"lzma": func(t *testing.T, b []byte) []byte {
			var buf bytes.Buffer
			w, err := lzma.NewWriter(&buf)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(b)
			w.Close()
			return withSize(buf.Bytes(), len(b))
		},
		// Over 8 MiB: several legacy blocks.
		"lz4": func(t *testing.T, b []byte) []byte { return withSize(lz4Legacy(t, b), len(b)) },
	}
	for format, compress := range compressors {
		t.Run(format, func(t *testing.T) {
			n := 256 << 10
			if format == "lz4" {
				n = 9 << 20
			}
			elf := fakeELF(t, n)
			got, err := ExtractVmlinux(fakeBzImage(compress(t, elf)))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, elf) {
				t.Fatalf("extracted %d bytes differ from the %d-byte original", len(got), len(elf))
			}
		})
	}

	t.Run("errors", func(t *testing.T) {
		if _, err := ExtractVmlinux(make([]byte, 4096)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("no setup header: %v, want invalid argument", err)
		}
		notELF := bytes.Repeat([]byte("not an elf "), 1000)
		var buf bytes.Buffer
		w := gzip.NewWriter(&buf)
		w.Write(notELF)
		w.Close()
		if _, err := ExtractVmlinux(fakeBzImage(buf.Bytes())); err == nil || !strings.Contains(err.Error(), "not an ELF") {
			t.Errorf("non-ELF payload: %v", err)
		}
		bad := fakeBzImage(withSize([]byte{0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4, 5, 6}, 1000))
		if _, err := ExtractVmlinux(bad); err == nil {
			t.Error("corrupt zstd payload accepted")
		}
	})
}

// TestVmlinuxMatchesLZ4Tool checks the vmlinux of the real kernel against
// an independent decoder, the lz4 command (Debian's kernel uses legacy LZ4).
func TestVmlinuxMatchesLZ4Tool(t *testing.T) {
	a := artifacts(t)
	lz4cmd, err := exec.LookPath("lz4")
	if err != nil {
		t.Skipf("SKIP: the lz4 command (Debian lz4) is not installed: %v", err)
	}
	bz, err := os.ReadFile(a.Vmlinuz)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := bzImagePayload(bz)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(payload, []byte{0x02, 0x21, 0x4c, 0x18}) {
		t.Skipf("SKIP: this kernel is not LZ4-compressed (magic % x)", payload[:4])
	}
	cmd := exec.Command(lz4cmd, "-dc")
	cmd.Stdin = bytes.NewReader(payload[:len(payload)-4]) // without the appended size
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	want, err := cmd.Output()
	if err != nil {
		t.Fatalf("lz4 -dc: %v: %s", err, stderr.String())
	}
	got, err := os.ReadFile(a.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("vmlinux (%d bytes) differs from lz4's decoding (%d bytes)", len(got), len(want))
	}
}

func TestInitrdContents(t *testing.T) {
	a := artifacts(t)
	f, err := os.Open(a.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("initrd is not gzip: %v", err)
	}
	cpioData, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	cpio := func(args ...string) string {
		cmd := exec.Command("cpio", append([]string{"--quiet"}, args...)...)
		cmd.Stdin = bytes.NewReader(cpioData)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio %v: %v", args, err)
		}
		return string(out)
	}
	// GNU cpio reads the archive: an independent check of the format.
	listing := strings.Split(strings.TrimSpace(cpio("-it")), "\n")
	has := func(p string) bool { return slices.Contains(listing, p) }
	for _, p := range []string{"init", "bin/busybox", "bin/sh", "sbin/switch_root", "dev/console", "etc/liquidmetal-initrd", "etc/liquidmetal/modules"} {
		if !has(p) {
			t.Errorf("initrd lacks %s", p)
		}
	}
	if got := cpio("-i", "--to-stdout", "init"); got != string(guestInit) {
		t.Error("initrd /init is not the guest init script")
	}
	list := strings.Fields(cpio("-i", "--to-stdout", "etc/liquidmetal/modules"))
	if !slices.Equal(list, a.Modules) {
		t.Errorf("module list %v, want %v", list, a.Modules)
	}
	pos := map[string]int{}
	for i, m := range list {
		pos[moduleName(m)] = i
		if !has(filepath.Join("lib/modules", a.KernelVersion, m)) {
			t.Errorf("initrd lacks module file %s", m)
		}
	}
	// Each module after what it depends on.
	for _, chain := range [][]string{
		{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk"},
		{"virtio", "virtio_net"},
		{"failover", "net_failover", "virtio_net"},
		{"fat", "vfat"},
	} {
		for i := 1; i < len(chain); i++ {
			a, aok := pos[chain[i-1]]
			b, bok := pos[chain[i]]
			if !aok || !bok || a > b {
				t.Errorf("module order: %s (%d, %v) must come before %s (%d, %v)", chain[i-1], a, aok, chain[i], b, bok)
			}
		}
	}
	if _, ok := pos["isofs"]; !ok {
		t.Error("isofs (for iso9660 cidata disks) is not loaded")
	}
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func treeSHA(t *testing.T, dir string) string {
	t.Helper()
	tr, err := treeFromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if err := tr.writeTar(h); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestBuildCachedAndReproducible checks that a second Build is served from
// the cache, that a build in a fresh folder gives the same bytes, and that
// a build of another recipe is redone.
func TestBuildCachedAndReproducible(t *testing.T) {
	a := artifacts(t)
	ctx := context.Background()

	start := time.Now()
	again, err := Build(ctx, filepath.Dir(a.Dir))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("cached Build took %v", d)
	}
	if again.Initrd != a.Initrd || again.KernelVersion != a.KernelVersion {
		t.Errorf("cached Build returned %+v, want %+v", again, a)
	}

	// A fresh cache folder, seeded with the downloaded packages only.
	cache := t.TempDir()
	debs := filepath.Join(cache, a.KernelVersion, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(a.Dir, "debs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(a.Dir, "debs", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(debs, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fresh, err := Build(ctx, cache)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]string{{a.Vmlinuz, fresh.Vmlinuz}, {a.Vmlinux, fresh.Vmlinux}, {a.Initrd, fresh.Initrd}, {a.Config, fresh.Config}} {
		if fileSHA(t, p[0]) != fileSHA(t, p[1]) {
			t.Errorf("%s differs between two builds", filepath.Base(p[0]))
		}
	}
	if treeSHA(t, a.RootFSDir) != treeSHA(t, fresh.RootFSDir) {
		t.Error("root filesystem tree differs between two builds")
	}

	// A manifest of another recipe makes Build redo the artifacts.
	mf := filepath.Join(fresh.Dir, "manifest.json")
	b, _ := os.ReadFile(mf)
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m.Recipe = "0-old"
	b, _ = json.Marshal(m)
	if err := os.WriteFile(mf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(fresh.Initrd); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(ctx, cache); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(mf)
	if err := json.Unmarshal(b, &m); err != nil || m.Recipe != recipeID() {
		t.Errorf("after a rebuild the manifest has recipe %q (%v), want %q", m.Recipe, err, recipeID())
	}
	if fileSHA(t, fresh.Initrd) != fileSHA(t, a.Initrd) {
		t.Error("rebuilt initrd differs")
	}
}

// layerFiles reads a layer and returns its entries by name.
func layerFiles(t *testing.T, r io.Reader) map[string]*tar.Header {
	t.Helper()
	files := map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(h.Name, "/")] = h
	}
}

func TestPush(t *testing.T) {
	a := artifacts(t)
	reg := testenv.NewRegistry(t)
	ctx := context.Background()

	imgs, err := Push(ctx, a, reg.Host)
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		imgs.Kernel: reg.Host + "/liquidmetal/kernel:" + a.KernelVersion,
		imgs.Initrd: reg.Host + "/liquidmetal/initrd:" + a.KernelVersion,
		imgs.Root:   reg.Host + "/liquidmetal/root:" + a.KernelVersion,
	} {
		if got != want {
			t.Errorf("reference %q, want %q", got, want)
		}
	}

	// Each file in the layer, with the content of the artifact it came from.
	wantFiles := map[string]map[string]string{
		imgs.Kernel: {KernelPath: a.Vmlinux, KernelBzImgPath: a.Vmlinuz, KernelConfigPath: a.Config},
		imgs.Initrd: {InitrdPath: a.Initrd},
		imgs.Root:   {"sbin/init": "", "bin/busybox": filepath.Join(a.RootFSDir, "bin", "busybox")},
	}
	digests := map[string]string{}
	for ref, want := range wantFiles {
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(r, remote.WithContext(ctx))
		if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		d, _ := img.Digest()
		digests[ref] = d.String()
		mt, _ := img.MediaType()
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		if mt != types.OCIManifestSchema1 || cf.OS != "linux" || cf.Architecture != "amd64" || len(layers) != 1 {
			t.Fatalf("%s: media type %s, platform %s/%s, %d layers; want one-layer OCI linux/amd64", ref, mt, cf.OS, cf.Architecture, len(layers))
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		// Read the layer's files and compare them with the artifacts.
		tr := tar.NewReader(rc)
		seen := map[string]bool{}
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			src, ok := want[h.Name]
			if !ok {
				continue
			}
			seen[h.Name] = true
			body, _ := io.ReadAll(tr)
			var wantBody []byte
			if src == "" {
				wantBody = guestInit
			} else if wantBody, err = os.ReadFile(src); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(body, wantBody) {
				t.Errorf("%s: %s differs from %s", ref, h.Name, src)
			}
		}
		rc.Close()
		for p := range want {
			if !seen[p] {
				t.Errorf("%s has no %s", ref, p)
			}
		}
	}

	// The manifest and its blobs, straight from the registry's HTTP API.
	resp, err := httpGet(t, "http://"+reg.Host+"/v2/liquidmetal/root/manifests/"+a.KernelVersion, string(types.OCIManifestSchema1))
	if err != nil {
		t.Fatal(err)
	}
	var mf struct {
		Config struct{ Digest string }
		Layers []struct {
			MediaType string
			Digest    string
		}
	}
	if err := json.Unmarshal(resp, &mf); err != nil {
		t.Fatalf("manifest: %v: %s", err, resp)
	}
	if len(mf.Layers) != 1 || mf.Layers[0].MediaType != string(types.OCILayer) {
		t.Fatalf("root manifest layers %+v", mf.Layers)
	}
	for _, dg := range []string{mf.Config.Digest, mf.Layers[0].Digest} {
		req, _ := http.NewRequest(http.MethodHead, "http://"+reg.Host+"/v2/liquidmetal/root/blobs/"+dg, nil)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != http.StatusOK {
			t.Errorf("blob %s: %s", dg, r.Status)
		}
	}

	// Root layer: busybox links and the sticky /tmp survive.
	root, _ := name.ParseReference(imgs.Root)
	img, err := remote.Image(root)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	rc, _ := layers[0].Uncompressed()
	files := layerFiles(t, rc)
	rc.Close()
	if h := files["bin/sh"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "/bin/busybox" {
		t.Errorf("bin/sh in the root layer: %+v", h)
	}
	if h := files["tmp"]; h == nil || h.Mode&0o1000 == 0 {
		t.Errorf("tmp in the root layer is not sticky: %+v", h)
	}
	if h := files["sbin/init"]; h == nil || fs.FileMode(h.Mode).Perm() != 0o755 || h.Uid != 0 {
		t.Errorf("sbin/init in the root layer: %+v", h)
	}

	// Pushing again under another tag gives the same image digests.
	again, err := Push(ctx, a, reg.Host, WithTag("again"), WithRepository("other/prefix"))
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{again.Kernel: digests[imgs.Kernel], again.Initrd: digests[imgs.Initrd], again.Root: digests[imgs.Root]} {
		if !strings.Contains(ref, "/other/prefix/") || !strings.HasSuffix(ref, ":again") {
			t.Errorf("reference %s ignores the options", ref)
		}
		r, _ := name.ParseReference(ref)
		desc, err := remote.Head(r)
		if err != nil {
			t.Fatal(err)
		}
		if desc.Digest.String() != want {
			t.Errorf("%s: digest %s, want %s (not reproducible)", ref, desc.Digest, want)
		}
	}
}

func httpGet(t *testing.T, url, accept string) ([]byte, error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, err
}

// TestPushBasicAuth pushes to a registry that requires a password.
func TestPushBasicAuth(t *testing.T) {
	a := artifacts(t)
	ctx := context.Background()
	reg := testenv.NewAuthRegistry(t, "pusher", "secret")

	var terr *transport.Error
	if _, err := Push(ctx, a, reg.Host); !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous push to a password registry: %v, want unauthorized", err)
	}
	imgs, err := Push(ctx, a, reg.Host, WithBasicAuth("pusher", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := httpGetAuth(t, "http://"+reg.Host+"/v2/liquidmetal/initrd/tags/list", "pusher", "secret")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `"`+a.KernelVersion+`"`) || imgs.Initrd == "" {
		t.Errorf("initrd tags after an authenticated push: %s", body)
	}
}

func httpGetAuth(t *testing.T, url, user, pass string) ([]byte, error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, err
}
