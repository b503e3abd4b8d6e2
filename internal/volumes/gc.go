package volumes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// GC removes the base images no VM uses and none has used for grace: a
// base image in use has more than one link (a VM's read-only volume or a
// qcow2 overlay's backing file is a hard link to it), while reflink clones
// and copies do not need it any more. Leftover temporary files older than
// grace go too. It returns the names of the base images removed.
func (p *Provisioner) GC(grace time.Duration) ([]string, error) {
	entries, err := os.ReadDir(p.baseDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("volumes gc: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp-"):
			// A build interrupted by a crash.
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) >= grace {
				if err := os.Remove(filepath.Join(p.baseDir(), n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, err)
				}
			}
		case strings.HasSuffix(n, ".img"):
			ok, err := p.collect(strings.TrimSuffix(n, ".img"), grace)
			if err != nil {
				errs = append(errs, err)
			} else if ok {
				removed = append(removed, n)
			}
		case strings.HasSuffix(n, ".lock"):
			// Removed with its image; an orphan goes when it is unused.
			if _, err := os.Stat(filepath.Join(p.baseDir(), strings.TrimSuffix(n, ".lock")+".img")); errors.Is(err, fs.ErrNotExist) {
				_, _ = p.collect(strings.TrimSuffix(n, ".lock"), grace)
			}
		}
	}
	if len(removed) > 0 {
		p.log.Info("base images collected", "removed", removed)
	}
	return removed, errors.Join(errs...)
}

// collect removes one base image (and its lock file) under its lock when
// it is unused and past grace.
func (p *Provisioner) collect(name string, grace time.Duration) (bool, error) {
	unlock, err := p.lock(name)
	if err != nil {
		return false, err
	}
	defer unlock()
	img := filepath.Join(p.baseDir(), name+".img")
	fi, err := os.Stat(img)
	if errors.Is(err, fs.ErrNotExist) {
		// Only the lock file is left. Removing it while holding its flock
		// is safe: a waiter re-creates it.
		return false, removeIfExists(img[:len(img)-4] + ".lock")
	}
	if err != nil {
		return false, fmt.Errorf("volumes gc: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		return false, nil
	}
	if time.Since(fi.ModTime()) < grace {
		return false, nil
	}
	if err := p.removeBaseDevice(context.Background(), img); err != nil { // devmapper.go
		return false, fmt.Errorf("volumes gc: %w", err)
	}
	if err := os.Remove(img); err != nil {
		return false, fmt.Errorf("volumes gc: %w", err)
	}
	return true, removeIfExists(filepath.Join(p.baseDir(), name+".lock"))
}

// BaseImages lists the base image files (for tests and operators).
func (p *Provisioner) BaseImages() ([]string, error) {
	m, err := filepath.Glob(filepath.Join(p.baseDir(), "*.img"))
	if err != nil {
		return nil, err
	}
	return m, nil
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
