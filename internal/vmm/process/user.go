package process

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// DefaultVMMUser is the system user VMM processes run as when the host has
// it and no other user is configured (hack/install-deps.sh creates it).
const DefaultVMMUser = "flintlock-vmm"

// User is the identity a VMM process runs as. The zero value is root.
type User struct {
	// Name is the user's name, or its uid when it has no passwd entry.
	Name     string
	UID, GID uint32
}

// Root is the daemon's own identity.
var Root = User{Name: "root"}

// IsRoot reports whether u is root (VMMs then run with the daemon's
// privileges).
func (u User) IsRoot() bool { return u.UID == 0 }

func (u User) String() string { return fmt.Sprintf("%s (%d:%d)", u.Name, u.UID, u.GID) }

// LookupUser resolves a VMM user given as "name", "name:group", "uid" or
// "uid:gid". A name takes its primary group; numeric ids need no passwd
// entry.
func LookupUser(s string) (User, error) {
	name, group, hasGroup := strings.Cut(strings.TrimSpace(s), ":")
	if name == "" || (hasGroup && group == "") {
		return User{}, fmt.Errorf("vmm user %q: want name, name:group, uid or uid:gid: %w", s, errdefs.ErrInvalidArgument)
	}
	var u User
	if id, err := strconv.ParseUint(name, 10, 32); err == nil {
		u = User{Name: name, UID: uint32(id), GID: uint32(id)}
		if pw, err := user.LookupId(name); err == nil {
			u.Name = pw.Username
			if gid, err := strconv.ParseUint(pw.Gid, 10, 32); err == nil {
				u.GID = uint32(gid)
			}
		}
	} else {
		pw, err := user.Lookup(name)
		if err != nil {
			return User{}, fmt.Errorf("vmm user %q: %w: %w", s, err, errdefs.ErrNotFound)
		}
		uid, err1 := strconv.ParseUint(pw.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(pw.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			return User{}, fmt.Errorf("vmm user %q: non-numeric ids %s:%s: %w", s, pw.Uid, pw.Gid, errdefs.ErrInvalidArgument)
		}
		u = User{Name: name, UID: uint32(uid), GID: uint32(gid)}
	}
	if hasGroup {
		gid, err := GroupID(group)
		if err != nil {
			return User{}, fmt.Errorf("vmm user %q: %w", s, err)
		}
		u.GID = gid
	}
	return u, nil
}

// GroupID resolves a group name or numeric id.
func GroupID(group string) (uint32, error) {
	if id, err := strconv.ParseUint(group, 10, 32); err == nil {
		return uint32(id), nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w: %w", group, err, errdefs.ErrNotFound)
	}
	id, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q: non-numeric id %q: %w", group, g.Gid, errdefs.ErrInvalidArgument)
	}
	return uint32(id), nil
}

// Credential is the process credential of a VMM run as u, with the
// supplementary groups given (e.g. kvm for /dev/kvm); nil for root, which
// keeps the daemon's own.
func (u User) Credential(groups ...uint32) *syscall.Credential {
	if u.IsRoot() {
		return nil
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: append([]uint32{}, groups...)}
}

// The grants below give an unprivileged VMM what it needs in its VM
// folder and nothing more. Files stay owned by root unless the VMM writes
// them; the VMM's group gets read access where it only reads. For root
// they do nothing.

// GrantDir lets u enter and list dir (root:<gid> 0750; the VMM creates
// nothing there) and gives every ancestor of dir that u could not enter
// the search bit for others (o+x: enter, not list), so the folder is
// reachable by path.
func (u User) GrantDir(dir string) error {
	if u.IsRoot() {
		return nil
	}
	if err := os.Chown(dir, 0, int(u.GID)); err != nil {
		return fmt.Errorf("grant %s to the vmm user: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		return fmt.Errorf("grant %s to the vmm user: %w", dir, err)
	}
	return u.GrantSearch(filepath.Dir(dir))
}

// GrantSearch gives dir and each of its ancestors that u could not enter
// the search bit for others (o+x: enter, not list).
func (u User) GrantSearch(dir string) error {
	if u.IsRoot() {
		return nil
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("grant %s to the vmm user: %w", d, err)
		}
		if !u.canSearch(st) {
			if err := os.Chmod(d, st.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("grant search of %s to the vmm user: %w", d, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func (u User) canSearch(st fs.FileInfo) bool {
	perm := st.Mode().Perm()
	sys, ok := st.Sys().(*syscall.Stat_t)
	switch {
	case !ok:
		return perm&0o001 != 0
	case sys.Uid == u.UID:
		return perm&0o100 != 0
	case sys.Gid == u.GID:
		return perm&0o010 != 0
	}
	return perm&0o001 != 0
}

// GrantRead lets u read the file at path: root:<gid>, group read, no
// write for the group or others.
func (u User) GrantRead(path string) error {
	if u.IsRoot() {
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("grant read of %s: %w", path, err)
	}
	if err := os.Chown(path, 0, int(u.GID)); err != nil {
		return fmt.Errorf("grant read of %s: %w", path, err)
	}
	if err := os.Chmod(path, (st.Mode().Perm()|0o040)&^0o022); err != nil {
		return fmt.Errorf("grant read of %s: %w", path, err)
	}
	return nil
}

// GrantWrite makes u the owner of the file at path (created empty when
// missing), readable and writable by it alone and readable by its group.
func (u User) GrantWrite(path string) error {
	if u.IsRoot() {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("grant write of %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Chown(int(u.UID), int(u.GID)); err != nil {
		return fmt.Errorf("grant write of %s: %w", path, err)
	}
	if err := f.Chmod(0o640); err != nil {
		return fmt.Errorf("grant write of %s: %w", path, err)
	}
	return nil
}

// GrantVM gives u what a VMM opens by path for vm: the VM folder
// (GrantDir), read access to the kernel, the initrd and the read-only
// disks, ownership of the writable disks and of the files of also. Files
// outside the VM folder are the operator's to arrange: they are never
// re-owned here.
func (u User) GrantVM(vm vmm.VM, also ...string) error {
	if u.IsRoot() {
		return nil
	}
	if err := u.GrantDir(vm.Dir); err != nil {
		return err
	}
	read := []string{vm.KernelPath}
	if vm.InitrdPath != "" {
		read = append(read, vm.InitrdPath)
	}
	write := append([]string{}, also...)
	for _, d := range vm.Disks {
		if d.ReadOnly {
			read = append(read, d.Path)
		} else {
			write = append(write, d.Path)
		}
	}
	for _, f := range read {
		if err := inside(vm.Dir, f, u.GrantRead); err != nil {
			return err
		}
	}
	for _, f := range write {
		if err := inside(vm.Dir, f, u.GrantWrite); err != nil {
			return err
		}
	}
	return nil
}

// inside calls fn with path when path lies in dir.
func inside(dir, path string, fn func(string) error) error {
	rel, err := filepath.Rel(dir, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil
	}
	return fn(path)
}

// SysProcAttr is the identity of a VMM process run as u, with /dev/kvm's
// group as a supplementary group when kvm (the VMM uses KVM); nil for
// root.
func (u User) SysProcAttr(kvm bool) *syscall.SysProcAttr {
	if u.IsRoot() {
		return nil
	}
	var groups []uint32
	if kvm {
		if st, err := os.Stat("/dev/kvm"); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Gid != 0 {
				groups = append(groups, sys.Gid)
			}
		}
	}
	return &syscall.SysProcAttr{Credential: u.Credential(groups...)}
}
