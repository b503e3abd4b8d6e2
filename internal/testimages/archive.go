package testimages

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild"
)

// entry is one file of a filesystem tree to be archived (cpio, tar) or
// written to a folder. Paths are relative, slash-separated, without a
// leading slash. Owner is always root and times are fixed (the epoch), so
// archives are reproducible.
type entry struct {
	path  string
	mode  fs.FileMode // type bits and permissions
	src   string      // regular file: host file to copy from, or
	data  []byte      // its content
	link  string      // symlink target
	major uint32      // character device numbers
	minor uint32
}

// tree is a set of entries by path.
type tree map[string]entry

func (t tree) dir(p string, perm fs.FileMode) {
	for d := p; d != "." && d != "/" && d != ""; d = path.Dir(d) {
		if _, ok := t[d]; !ok {
			t[d] = entry{path: d, mode: fs.ModeDir | 0o755}
		}
	}
	e := t[p]
	e.mode = fs.ModeDir | perm
	t[p] = e
}

func (t tree) parent(p string) {
	if d := path.Dir(p); d != "." {
		if _, ok := t[d]; !ok {
			t.dir(d, 0o755)
		}
	}
}

func (t tree) file(p string, perm fs.FileMode, data []byte) {
	t.parent(p)
	t[p] = entry{path: p, mode: perm, data: data}
}

func (t tree) copyOf(p string, perm fs.FileMode, src string) {
	t.parent(p)
	t[p] = entry{path: p, mode: perm, src: src}
}

func (t tree) symlink(p, target string) {
	t.parent(p)
	t[p] = entry{path: p, mode: fs.ModeSymlink | 0o777, link: target}
}

func (t tree) charDev(p string, perm fs.FileMode, major, minor uint32) {
	t.parent(p)
	t[p] = entry{path: p, mode: fs.ModeDevice | fs.ModeCharDevice | perm, major: major, minor: minor}
}

// sorted returns the entries in path order: every folder before its content.
func (t tree) sorted() []entry {
	es := make([]entry, 0, len(t))
	for _, e := range t {
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b entry) int { return strings.Compare(a.path, b.path) })
	return es
}

// permBits keeps the permission, setuid, setgid and sticky bits of a mode.
const permBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

func (e entry) content() ([]byte, error) {
	if e.src != "" {
		return os.ReadFile(e.src)
	}
	return e.data, nil
}

// treeFromDir reads a folder into a tree (regular files, folders, symlinks).
func treeFromDir(dir string) (tree, error) {
	t := tree{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			t[rel] = entry{path: rel, mode: fs.ModeDir | info.Mode()&permBits}
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			t[rel] = entry{path: rel, mode: fs.ModeSymlink | 0o777, link: target}
		case d.Type().IsRegular():
			t[rel] = entry{path: rel, mode: info.Mode() & permBits, src: p}
		default:
			return fmt.Errorf("%s: unsupported file type %v", p, d.Type())
		}
		return nil
	})
	return t, err
}

// writeDir materialises the tree under dir (device nodes are left out:
// the guest mounts devtmpfs).
func (t tree) writeDir(dir string) error {
	for _, e := range t.sorted() {
		p := filepath.Join(dir, filepath.FromSlash(e.path))
		switch {
		case e.mode.IsDir():
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(p, e.mode&permBits); err != nil {
				return err
			}
		case e.mode&fs.ModeSymlink != 0:
			if err := os.Symlink(e.link, p); err != nil {
				return err
			}
		case e.mode&fs.ModeDevice != 0:
		default:
			b, err := e.content()
			if err != nil {
				return err
			}
			if err := os.WriteFile(p, b, e.mode.Perm()); err != nil {
				return err
			}
			if err := os.Chmod(p, e.mode&permBits); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeCPIO writes the tree as a "newc" cpio archive, the initramfs format.
func (t tree) writeCPIO(w io.Writer) error {
	cw := &countingWriter{w: w}
	ino := uint32(1)
	header := func(name string, mode uint32, nlink, size, major, minor uint32) error {
		_, err := fmt.Fprintf(cw, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, nlink, 0, size, 0, 0, major, minor, len(name)+1, 0)
		ino++
		if err != nil {
			return err
		}
		if _, err := io.WriteString(cw, name+"\x00"); err != nil {
			return err
		}
		return cw.pad4()
	}
	for _, e := range t.sorted() {
		perm := imagebuild.UnixMode(e.mode)
		var err error
		switch {
		case e.mode.IsDir():
			err = header(e.path, 0o040000|perm, 2, 0, 0, 0)
		case e.mode&fs.ModeSymlink != 0:
			if err = header(e.path, 0o120000|perm, 1, uint32(len(e.link)), 0, 0); err == nil {
				_, err = io.WriteString(cw, e.link)
			}
		case e.mode&fs.ModeCharDevice != 0:
			err = header(e.path, 0o020000|perm, 1, 0, e.major, e.minor)
		default:
			var b []byte
			if b, err = e.content(); err != nil {
				return err
			}
			if err = header(e.path, 0o100000|perm, 1, uint32(len(b)), 0, 0); err == nil {
				_, err = cw.Write(b)
			}
		}
		if err != nil {
			return fmt.Errorf("cpio %s: %w", e.path, err)
		}
		if err := cw.pad4(); err != nil {
			return err
		}
	}
	if err := header("TRAILER!!!", 0, 1, 0, 0, 0); err != nil {
		return err
	}
	return cw.pad4()
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) pad4() error {
	if r := c.n % 4; r != 0 {
		_, err := c.Write(make([]byte, 4-r))
		return err
	}
	return nil
}

// writeTar writes the tree as a tar archive (an OCI layer before
// compression), root-owned with fixed times.
func (t tree) writeTar(w io.Writer) error {
	tw := tar.NewWriter(w)
	for _, e := range t.sorted() {
		h := &tar.Header{
			Name:    e.path,
			Mode:    int64(imagebuild.UnixMode(e.mode)),
			ModTime: time.Unix(0, 0),
		}
		var body []byte
		switch {
		case e.mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, e.path+"/"
		case e.mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		case e.mode&fs.ModeCharDevice != 0:
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, int64(e.major), int64(e.minor)
		default:
			b, err := e.content()
			if err != nil {
				return err
			}
			h.Typeflag, h.Size, body = tar.TypeReg, int64(len(b)), b
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("tar %s: %w", e.path, err)
		}
		if _, err := tw.Write(body); err != nil {
			return fmt.Errorf("tar %s: %w", e.path, err)
		}
	}
	return tw.Close()
}
