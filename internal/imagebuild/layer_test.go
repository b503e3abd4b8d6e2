package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// readTar lists a gzip'd tar file: headers by name, and regular files'
// contents.
func readTar(t *testing.T, path string) (map[string]*tar.Header, map[string][]byte, []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	return readTarStream(t, zr, func(string) bool { return true })
}

// readTarGz reads a gzip'd tar stream (see readTarStream).
func readTarGz(t *testing.T, r io.Reader, keep func(name string) bool) (map[string]*tar.Header, map[string][]byte, []string) {
	t.Helper()
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	return readTarStream(t, zr, keep)
}

// readTarStream reads a tar stream, keeping the content of the regular
// files keep selects.
func readTarStream(t *testing.T, r io.Reader, keep func(name string) bool) (map[string]*tar.Header, map[string][]byte, []string) {
	t.Helper()
	tr := tar.NewReader(r)
	hs, data := map[string]*tar.Header{}, map[string][]byte{}
	var order []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hs, data, order
		}
		if err != nil {
			t.Fatal(err)
		}
		hs[h.Name] = h
		order = append(order, h.Name)
		if h.Typeflag == tar.TypeReg && keep(h.Name) {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			data[h.Name] = b
		}
	}
}

// TestTarTreeFidelity archives a tree holding every kind of file a root
// filesystem has and checks what a layer applier would see.
func TestTarTreeFidelity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root (device nodes, other owners)")
	}
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(p("usr/bin"), 0o755))
	must(os.WriteFile(p("usr/bin/tool"), []byte("#!/bin/sh\necho tool\n"), 0o755))
	must(unix.Chmod(p("usr/bin/tool"), 0o4755))
	must(os.Link(p("usr/bin/tool"), p("usr/bin/tool2")))
	must(os.Symlink("tool", p("usr/bin/link")))
	must(os.WriteFile(p("secret"), []byte("s"), 0o640))
	must(os.Chown(p("secret"), 0, 42))
	must(unix.Mkfifo(p("fifo"), 0o600))
	must(unix.Mknod(p("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(os.Mkdir(p("sticky"), 0o755))
	must(unix.Chmod(p("sticky"), 0o1777))
	xattrOK := unix.Setxattr(p("usr/bin/tool"), "user.liquidmetal", []byte("cap"), 0) == nil
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(p("secret"), old, old))

	out := t.TempDir()
	l, err := writeLayer(out, "tree", "test", func(tw *tar.Writer) error { return tarTree(tw, dir, treeOptions{}) })
	if err != nil {
		t.Fatal(err)
	}
	hs, data, order := readTar(t, l.File)
	want := []string{"fifo", "null", "secret", "sticky/", "usr/", "usr/bin/", "usr/bin/link", "usr/bin/tool", "usr/bin/tool2"}
	if !equalStrings(order, want) {
		t.Fatalf("entries %v, want %v (lexical, every folder before its content)", order, want)
	}
	check := func(name string, ok bool, what string) {
		t.Helper()
		if !ok {
			t.Errorf("%s: %s; header %+v", name, what, hs[name])
		}
	}
	check("usr/bin/tool", hs["usr/bin/tool"].Typeflag == tar.TypeReg && hs["usr/bin/tool"].Mode == 0o4755, "setuid regular file")
	check("usr/bin/tool", string(data["usr/bin/tool"]) == "#!/bin/sh\necho tool\n", "content")
	check("usr/bin/tool2", hs["usr/bin/tool2"].Typeflag == tar.TypeLink && hs["usr/bin/tool2"].Linkname == "usr/bin/tool", "hard link to the first name")
	check("usr/bin/link", hs["usr/bin/link"].Typeflag == tar.TypeSymlink && hs["usr/bin/link"].Linkname == "tool", "symbolic link")
	check("secret", hs["secret"].Gid == 42 && hs["secret"].Mode == 0o640 && hs["secret"].ModTime.Equal(old), "owner group, mode and time kept")
	check("fifo", hs["fifo"].Typeflag == tar.TypeFifo, "FIFO")
	check("null", hs["null"].Typeflag == tar.TypeChar && hs["null"].Devmajor == 1 && hs["null"].Devminor == 3, "character device 1:3")
	check("sticky/", hs["sticky/"].Mode == 0o1777, "sticky folder")
	if xattrOK {
		check("usr/bin/tool", hs["usr/bin/tool"].PAXRecords["SCHILY.xattr.user.liquidmetal"] == "cap", "extended attribute")
	} else {
		t.Log("the temporary folder's file system takes no user xattrs; not checked")
	}

	// The same tree gives the same bytes; fixed times drop owners and times.
	l2, err := writeLayer(t.TempDir(), "tree", "test", func(tw *tar.Writer) error { return tarTree(tw, dir, treeOptions{}) })
	if err != nil {
		t.Fatal(err)
	}
	if l2.Digest != l.Digest || l2.DiffID != l.DiffID {
		t.Errorf("same tree, different layers: %v/%v vs %v/%v", l.Digest, l.DiffID, l2.Digest, l2.DiffID)
	}
	l3, err := writeLayer(t.TempDir(), "tree", "test", func(tw *tar.Writer) error {
		return tarTree(tw, dir, treeOptions{prefix: "x/y", fixedTimes: true})
	})
	if err != nil {
		t.Fatal(err)
	}
	hs3, _, _ := readTar(t, l3.File)
	if h := hs3["x/y/secret"]; h == nil || h.Gid != 0 || !h.ModTime.Equal(epoch) {
		t.Errorf("fixed times: x/y/secret header %+v, want root's with the epoch", h)
	}
	if hs3["x/y/"] == nil {
		t.Error("the prefix folder itself is not archived")
	}

	// The description written beside the layer is what loadLayer returns.
	got, err := loadLayer(out, "tree")
	if err != nil || got.Digest != l.Digest || got.Size != l.Size {
		t.Errorf("loadLayer: %+v, %v; want %+v", got, err, l)
	}
	b, _ := os.ReadFile(l.File)
	if int64(len(b)) != l.Size || sha256Hex(b) != l.Digest.Hex {
		t.Errorf("layer file of %d bytes does not match its description %+v", len(b), l)
	}
	zr, _ := gzip.NewReader(bytes.NewReader(b))
	raw, _ := io.ReadAll(zr)
	if sha256Hex(raw) != l.DiffID.Hex {
		t.Error("diff ID is not the digest of the uncompressed tar")
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
