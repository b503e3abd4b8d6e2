package images

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/opencontainers/go-digest"
)

// KernelPaths are the paths tried, in order, when a kernel image names no
// filename: boot/vmlinuz, boot/vmlinux, vmlinuz, vmlinux.
var KernelPaths = []string{"boot/vmlinuz", "boot/vmlinux", "vmlinuz", "vmlinux"}

// InitrdPaths are the paths tried, in order, when an initrd image names no
// filename: boot/initrd.img, initrd.img, boot/initrd.
var InitrdPaths = []string{"boot/initrd.img", "initrd.img", "boot/initrd"}

// CopyFile copies the file at path inside img to dst, atomically (a
// temporary file renamed over dst). Symbolic links inside the image are
// followed within the image. A missing file is errdefs.ErrNotFound naming
// the image and the path.
//
// With a cache (Options.CacheDir), dst may be a hard link to a read-only
// cached file shared with other VMs: replace it, never write into it.
func (s *Service) CopyFile(ctx context.Context, uid string, img Image, path, dst string) error {
	_, err := s.CopyFirst(ctx, uid, img, []string{path}, dst)
	return err
}

// CopyKernel copies the kernel out of img to dst: filename when given,
// else the first of KernelPaths found. It returns the path used.
func (s *Service) CopyKernel(ctx context.Context, uid string, img Image, filename, dst string) (string, error) {
	if filename != "" {
		return s.CopyFirst(ctx, uid, img, []string{filename}, dst)
	}
	return s.CopyFirst(ctx, uid, img, KernelPaths, dst)
}

// CopyInitrd copies the initrd out of img to dst: filename when given,
// else the first of InitrdPaths found. It returns the path used.
func (s *Service) CopyInitrd(ctx context.Context, uid string, img Image, filename, dst string) (string, error) {
	if filename != "" {
		return s.CopyFirst(ctx, uid, img, []string{filename}, dst)
	}
	return s.CopyFirst(ctx, uid, img, InitrdPaths, dst)
}

// CopyFirst copies the first of paths that exists in img to dst (see
// CopyFile) and returns it. When the cache knows the answer, the image is
// not mounted at all.
func (s *Service) CopyFirst(ctx context.Context, uid string, img Image, paths []string, dst string) (string, error) {
	if len(paths) == 0 {
		return "", fmt.Errorf("no path to copy from image %q: %w", img.Ref, errdefs.ErrInvalidArgument)
	}
	clean := make([]string, len(paths))
	for i, p := range paths {
		c, err := cleanImagePath(p)
		if err != nil {
			return "", err
		}
		clean[i] = c
	}
	if img.ChainID == "" {
		return "", fmt.Errorf("image %q has not been pulled: %w", img.Ref, errdefs.ErrInvalidArgument)
	}
	notFound := func() error {
		return fmt.Errorf("%s not found in image %q: %w", strings.Join(clean, ", "), img.Ref, errdefs.ErrNotFound)
	}

	c := s.cache(img)
	if c != nil {
		known := true
		for _, p := range clean {
			switch c.lookup(p) {
			case cacheHit:
				if err := placeFile(c.file(p), dst); err != nil {
					return "", err
				}
				return p, nil
			case cacheAbsent:
				continue
			}
			known = false
			break
		}
		if known {
			return "", notFound()
		}
	}

	var found string
	err := s.WithMounted(ctx, uid, img, func(root string) error {
		for _, p := range clean {
			src, err := resolveInRoot(root, p)
			if errors.Is(err, errdefs.ErrNotFound) {
				if c != nil {
					c.markAbsent(p)
				}
				continue
			}
			if err != nil {
				return fmt.Errorf("%s in image %q: %w", p, img.Ref, err)
			}
			if c != nil {
				if err := c.store(p, src); err != nil {
					return err
				}
				if err := placeFile(c.file(p), dst); err != nil {
					return err
				}
			} else if err := copyAtomic(src, dst, 0o644); err != nil {
				return err
			}
			found = p
			return nil
		}
		return notFound()
	})
	if err != nil {
		return "", err
	}
	return found, nil
}

// cleanImagePath makes p relative to the image root, refusing escapes.
func cleanImagePath(p string) (string, error) {
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if p == "" || c == "" {
		return "", fmt.Errorf("path %q in image: %w", p, errdefs.ErrInvalidArgument)
	}
	return c, nil
}

// resolveInRoot returns the host path of the regular file p inside root,
// following symbolic links as if root were "/".
func resolveInRoot(root, p string) (string, error) {
	full, err := securejoin.SecureJoin(root, p)
	if err != nil {
		return "", err
	}
	fi, err := os.Lstat(full)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return "", errdefs.ErrNotFound
		}
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("not a regular file (%s): %w", fi.Mode().Type(), errdefs.ErrInvalidArgument)
	}
	return full, nil
}

// copyAtomic copies src to dst through a synced temporary file in dst's
// folder.
func copyAtomic(src, dst string, mode os.FileMode) (retErr error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("copying to %s: %w", dst, err)
	}
	defer func() {
		if retErr != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, in); err != nil {
		return fmt.Errorf("copying to %s: %w", dst, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("copying to %s: %w", dst, err)
	}
	return nil
}

// placeFile puts the cached file at dst: a hard link renamed over dst, or a
// copy when dst is on another filesystem.
func placeFile(cached, dst string) error {
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".link-"+randomSuffix())
	if err := os.Link(cached, tmp); err != nil {
		if errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EMLINK) {
			return copyAtomic(cached, dst, 0o644)
		}
		return fmt.Errorf("linking %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("linking %s: %w", dst, err)
	}
	return nil
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// fileCache holds the files extracted from one unpacked image (one folder
// per chain ID): <name> is a copy of the file, <name>.absent records that
// the path does not exist in the image. Names hash the image path.
type fileCache struct{ dir string }

type cacheState int

const (
	cacheUnknown cacheState = iota
	cacheHit
	cacheAbsent
)

func (s *Service) cache(img Image) *fileCache {
	if s.opts.CacheDir == "" {
		return nil
	}
	return &fileCache{dir: filepath.Join(s.opts.CacheDir, img.ChainID.Encoded())}
}

func cacheName(p string) string {
	sum := sha256.Sum256([]byte(p))
	return hex.EncodeToString(sum[:16])
}

func (c *fileCache) file(p string) string { return filepath.Join(c.dir, cacheName(p)) }

func (c *fileCache) lookup(p string) cacheState {
	if fi, err := os.Stat(c.file(p)); err == nil && fi.Mode().IsRegular() {
		return cacheHit
	}
	if _, err := os.Stat(c.file(p) + ".absent"); err == nil {
		return cacheAbsent
	}
	return cacheUnknown
}

// store copies src into the cache as p, read-only.
func (c *fileCache) store(p, src string) error {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("image file cache: %w", err)
	}
	if err := copyAtomic(src, c.file(p), 0o444); err != nil {
		return fmt.Errorf("image file cache: %w", err)
	}
	return nil
}

// markAbsent records that p is not in the image; failing to record it only
// costs a mount next time.
func (c *fileCache) markAbsent(p string) {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return
	}
	if f, err := os.Create(c.file(p) + ".absent"); err == nil {
		f.Close()
	}
}

// PruneCache removes the cached files of images whose unpacked snapshot is
// gone from containerd (RemoveImage and DeleteLease of every VM using it),
// and returns how many images' files it removed.
func (s *Service) PruneCache(ctx context.Context) (int, error) {
	if s.opts.CacheDir == "" {
		return 0, nil
	}
	entries, err := os.ReadDir(s.opts.CacheDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("image file cache: %w", err)
	}
	ctx = s.withNamespace(ctx)
	sn, err := s.Snapshotter(ctx)
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, e := range entries {
		chainID := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if e.IsDir() && chainID.Validate() == nil {
			_, err := s.client.SnapshotService(sn).Stat(ctx, chainID.String())
			if err == nil {
				continue
			}
			if !errdefs.IsNotFound(err) {
				return removed, fmt.Errorf("image file cache: %w", err)
			}
		}
		if err := os.RemoveAll(filepath.Join(s.opts.CacheDir, e.Name())); err != nil {
			return removed, fmt.Errorf("image file cache: %w", err)
		}
		removed++
	}
	return removed, nil
}

// ClearCache removes every cached file.
func (s *Service) ClearCache() error {
	if s.opts.CacheDir == "" {
		return nil
	}
	entries, err := os.ReadDir(s.opts.CacheDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("image file cache: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(s.opts.CacheDir, e.Name())); err != nil {
			return fmt.Errorf("image file cache: %w", err)
		}
	}
	return nil
}
