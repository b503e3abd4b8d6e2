package imagebuild

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"
)

// epoch is the modification time of every file in the layers this package
// generates (not of the debootstrap tree, whose times Python's byte-code
// caches depend on): fixed times make rebuilds byte-identical.
var epoch = time.Unix(0, 0).UTC()

// Layer is a gzip'd tar layer file in the cache with its digests, kept in
// a JSON file beside it so a warm build reads no layer data.
type Layer struct {
	// File is the .tar.gz file.
	File string `json:"-"`
	// Digest is the sha256 of the compressed file, DiffID of the tar.
	Digest v1.Hash `json:"digest"`
	DiffID v1.Hash `json:"diffID"`
	Size   int64   `json:"size"`
	// CreatedBy describes the layer in the image's history.
	CreatedBy string `json:"createdBy"`
}

// v1Layer presents the cached file as a go-containerregistry layer.
func (l Layer) v1Layer() (v1.Layer, error) {
	return partial.CompressedToLayer(compressedLayer{l})
}

type compressedLayer struct{ l Layer }

func (c compressedLayer) Digest() (v1.Hash, error)            { return c.l.Digest, nil }
func (c compressedLayer) DiffID() (v1.Hash, error)            { return c.l.DiffID, nil }
func (c compressedLayer) Size() (int64, error)                { return c.l.Size, nil }
func (c compressedLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (c compressedLayer) Compressed() (io.ReadCloser, error)  { return os.Open(c.l.File) }

// loadLayer returns the cached layer file (name.tar.gz) of dir when both
// it and its description (name.json) exist and agree in size.
func loadLayer(dir, name string) (Layer, error) {
	var l Layer
	b, err := os.ReadFile(filepath.Join(dir, name+".json"))
	if err != nil {
		return l, err
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("layer %s/%s.json: %w", dir, name, err)
	}
	l.File = filepath.Join(dir, name+".tar.gz")
	fi, err := os.Stat(l.File)
	if err != nil {
		return l, err
	}
	if fi.Size() != l.Size {
		return l, fmt.Errorf("layer %s is %d bytes, its description says %d", l.File, fi.Size(), l.Size)
	}
	return l, nil
}

// writeLayer makes dir/name.tar.gz from the tar stream fill writes, and its
// description dir/name.json. Both appear only once complete.
func writeLayer(dir, name, createdBy string, fill func(tw *tar.Writer) error) (Layer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Layer{}, err
	}
	l := Layer{File: filepath.Join(dir, name+".tar.gz"), CreatedBy: createdBy}
	tmp, err := os.CreateTemp(dir, name+".tar.gz.*")
	if err != nil {
		return Layer{}, err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	zsum, tsum := sha256.New(), sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, zsum)}
	// No name and no time in the gzip header: the bytes depend on the
	// content alone.
	zw, err := gzip.NewWriterLevel(cw, gzip.DefaultCompression)
	if err != nil {
		tmp.Close()
		return Layer{}, err
	}
	tw := tar.NewWriter(io.MultiWriter(zw, tsum))
	err = fill(tw)
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Close()
	} else {
		tmp.Close()
	}
	if err != nil {
		return Layer{}, fmt.Errorf("layer %s: %w", name, err)
	}
	l.Digest, l.DiffID, l.Size = sumHash(zsum), sumHash(tsum), cw.n
	b, _ := json.MarshalIndent(l, "", "  ")
	if err := os.Rename(tmp.Name(), l.File); err != nil {
		return Layer{}, err
	}
	if err := writeFileAtomic(filepath.Join(dir, name+".json"), append(b, '\n'), 0o644); err != nil {
		return Layer{}, err
	}
	return l, nil
}

func sumHash(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// file is one entry of a generated layer. Owner is root.
type file struct {
	name string      // slash path without a leading slash
	mode fs.FileMode // type bits and permissions
	data []byte      // content of a regular file, or
	src  string      // a host file to copy
	link string      // symlink target
}

// files is a generated layer's content by path.
type files map[string]file

// add puts f in the set together with its missing parent folders (0755).
func (fs_ files) add(f file) {
	for d := path.Dir(f.name); d != "." && d != "/"; d = path.Dir(d) {
		if _, ok := fs_[d]; !ok {
			fs_[d] = file{name: d, mode: fs.ModeDir | 0o755}
		}
	}
	fs_[f.name] = f
}

// writeTar writes the entries in path order (every folder before its
// content) with fixed times.
func (fs_ files) writeTar(tw *tar.Writer) error {
	names := make([]string, 0, len(fs_))
	for n := range fs_ {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := fs_[n]
		h := &tar.Header{Name: f.name, Mode: int64(UnixMode(f.mode)), ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case f.mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
		case f.mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
		default:
			h.Typeflag = tar.TypeReg
		}
		if err := writeEntry(tw, h, f); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

// writeEntry writes the header and, for a regular file, its content.
func writeEntry(tw *tar.Writer, h *tar.Header, f file) error {
	if h.Typeflag != tar.TypeReg {
		return tw.WriteHeader(h)
	}
	if f.src == "" {
		h.Size = int64(len(f.data))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(f.data)
		return err
	}
	fh, err := os.Open(f.src)
	if err != nil {
		return err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return err
	}
	h.Size = fi.Size()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if n, err := io.Copy(tw, fh); err != nil || n != h.Size {
		return fmt.Errorf("copied %d of %d bytes of %s: %v", n, h.Size, f.src, err)
	}
	return nil
}

// UnixMode is the permission part of a mode as a unix (tar) mode, setuid,
// setgid and sticky bits included.
func UnixMode(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// treeOptions tune tarTree.
type treeOptions struct {
	// prefix is put before every path (e.g. "usr/lib/modules/6.1.0-1").
	prefix string
	// fixedTimes replaces every modification time with epoch and makes
	// every file root's, for reproducible layers; otherwise times and
	// owners are kept.
	fixedTimes bool
}

// tarTree writes the folder tree under root as tar entries with full
// fidelity: owners, modes (setuid, setgid, sticky), hard links, symbolic
// links, device nodes, FIFOs and extended attributes (as PAX
// SCHILY.xattr records, e.g. file capabilities). Sockets are left out.
// Entries come in lexical order, so the stream depends only on the tree.
func tarTree(tw *tar.Writer, root string, o treeOptions) error {
	type inode struct{ dev, ino uint64 }
	links := map[inode]string{}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		switch {
		case name == "." && o.prefix == "":
			return nil
		case name == ".":
			name = o.prefix
		case o.prefix != "":
			name = o.prefix + "/" + name
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat information", p)
		}
		h := &tar.Header{
			Name:    name,
			Mode:    int64(st.Mode & 0o7777),
			Uid:     int(st.Uid),
			Gid:     int(st.Gid),
			ModTime: fi.ModTime().Truncate(time.Second),
			Format:  tar.FormatPAX,
		}
		if o.fixedTimes {
			h.Uid, h.Gid, h.ModTime = 0, 0, epoch
		}
		var body string
		switch typ := fi.Mode().Type(); {
		case typ == fs.ModeSocket:
			return nil
		case fi.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, name+"/"
		case typ == fs.ModeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			h.Typeflag, h.Linkname = tar.TypeSymlink, target
		case typ&fs.ModeDevice != 0:
			h.Typeflag = tar.TypeBlock
			if typ&fs.ModeCharDevice != 0 {
				h.Typeflag = tar.TypeChar
			}
			h.Devmajor, h.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		case typ == fs.ModeNamedPipe:
			h.Typeflag = tar.TypeFifo
		case typ == 0:
			if st.Nlink > 1 {
				key := inode{uint64(st.Dev), st.Ino}
				if first, ok := links[key]; ok {
					h.Typeflag, h.Linkname = tar.TypeLink, first
					break
				}
				links[key] = name
			}
			h.Typeflag, h.Size, body = tar.TypeReg, fi.Size(), p
		default:
			return fmt.Errorf("%s: unsupported file type %v", p, typ)
		}
		xattrs, err := readXattrs(p)
		if err != nil {
			return err
		}
		if len(xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if body == "" {
			return nil
		}
		f, err := os.Open(body)
		if err != nil {
			return err
		}
		defer f.Close()
		if n, err := io.Copy(tw, f); err != nil || n != h.Size {
			return fmt.Errorf("%s: copied %d of %d bytes (changed while archived?): %v", p, n, h.Size, err)
		}
		return nil
	})
}

// readXattrs returns the extended attributes of a file (not following a
// symbolic link). File systems without them give none.
func readXattrs(p string) (map[string]string, error) {
	sz, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.ENOTSUP) || sz == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list xattrs of %s: %w", p, err)
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, fmt.Errorf("list xattrs of %s: %w", p, err)
	}
	out := map[string]string{}
	for _, k := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if k == "" {
			continue
		}
		vsz, err := unix.Lgetxattr(p, k, nil)
		if err != nil {
			return nil, fmt.Errorf("xattr %s of %s: %w", k, p, err)
		}
		v := make([]byte, vsz)
		if vsz, err = unix.Lgetxattr(p, k, v); err != nil {
			return nil, fmt.Errorf("xattr %s of %s: %w", k, p, err)
		}
		out[k] = string(v[:vsz])
	}
	return out, nil
}
