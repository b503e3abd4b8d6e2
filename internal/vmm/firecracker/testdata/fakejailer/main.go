// Command fakejailer is a TEST STAND-IN for Firecracker's `jailer`, which
// is not installed on the test hosts. It takes the jailer's command line
// and does what the jailer does to start a jailed Firecracker, minus the
// cgroups and namespaces: it checks the id and exec file, creates
// <chroot-base-dir>/<exec file name>/<id>/root, copies the exec file in,
// creates /dev/net/tun, /dev/kvm and /dev/urandom nodes owned by --uid,
// chroots, drops to --uid/--gid and execs the exec file with --id and the
// start-time arguments followed by the arguments after "--". It is built by
// the provider's tests and never shipped.
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "Jailer error: "+format+"\n", a...)
	os.Exit(1)
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

func main() {
	opts := map[string]string{}
	multi := map[string][]string{}
	var extra []string
	valued := map[string]bool{"--id": true, "--exec-file": true, "--uid": true, "--gid": true, "--chroot-base-dir": true,
		"--cgroup-version": true, "--parent-cgroup": true, "--netns": true}
	repeated := map[string]bool{"--cgroup": true, "--resource-limit": true}
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			extra = args[i+1:]
			i = len(args)
		case a == "--daemonize" || a == "--new-pid-ns":
			fail("fake jailer does not act out %s", a)
		case valued[a] || repeated[a]:
			if i+1 >= len(args) {
				fail("Argument '%s' requires a value, but none was supplied.", strings.TrimPrefix(a, "--"))
			}
			if valued[a] {
				if _, dup := opts[a]; dup {
					fail("Argument '%s' was provided more than once.", strings.TrimPrefix(a, "--"))
				}
				opts[a] = args[i+1]
			} else {
				multi[a] = append(multi[a], args[i+1])
			}
			i++
		default:
			fail("Found argument '%s' which wasn't expected, or isn't valid in this context.", a)
		}
	}
	for _, req := range []string{"--id", "--exec-file", "--uid", "--gid"} {
		if opts[req] == "" {
			fail("Argument '%s' required, but not found.", strings.TrimPrefix(req, "--"))
		}
	}
	id := opts["--id"]
	if !idPattern.MatchString(id) {
		fail("Invalid instance ID: %s", id)
	}
	uid, err1 := strconv.Atoi(opts["--uid"])
	gid, err2 := strconv.Atoi(opts["--gid"])
	if err1 != nil || err2 != nil {
		fail("Invalid uid or gid")
	}
	switch v := opts["--cgroup-version"]; v {
	case "", "1", "2":
	default:
		fail("Invalid cgroup version: %s", v)
	}
	for _, c := range multi["--cgroup"] {
		if k, _, ok := strings.Cut(c, "="); !ok || !strings.Contains(k, ".") {
			fail("Invalid cgroup: %s", c)
		}
	}
	if ns := opts["--netns"]; ns != "" {
		if _, err := os.Stat(ns); err != nil {
			fail("Failed to open netns: %v", err)
		}
	}
	exe := opts["--exec-file"]
	if !filepath.IsAbs(exe) {
		fail("Invalid exec file: not an absolute path")
	}
	name := filepath.Base(exe)
	if !strings.Contains(name, "firecracker") {
		fail("Invalid filename. The filename of `--exec-file` option must contain \"firecracker\": %s", name)
	}
	base := opts["--chroot-base-dir"]
	if base == "" {
		base = "/srv/jailer"
	}
	root := filepath.Join(base, name, id, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		fail("%v", err)
	}
	if err := copyExec(exe, filepath.Join(root, name)); err != nil {
		fail("Failed to copy the exec file: %v", err)
	}
	for _, d := range []struct {
		path         string
		major, minor uint32
	}{{"dev/net/tun", 10, 200}, {"dev/kvm", 10, 232}, {"dev/urandom", 1, 9}} {
		p := filepath.Join(root, d.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			fail("%v", err)
		}
		_ = os.Remove(p)
		if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(d.major, d.minor))); err != nil {
			fail("Failed to create %s: %v", d.path, err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			fail("%v", err)
		}
	}
	start := time.Now()
	if err := syscall.Chroot(root); err != nil {
		fail("Failed to chroot: %v", err)
	}
	if err := os.Chdir("/"); err != nil {
		fail("%v", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		fail("setgid: %v", err)
	}
	if err := syscall.Setuid(uid); err != nil {
		fail("setuid: %v", err)
	}
	us := strconv.FormatInt(start.UnixMicro(), 10)
	argv := append([]string{"/" + name, "--id", id, "--start-time-us", us, "--start-time-cpu-us", "0", "--parent-cpu-time-us", "0"}, extra...)
	if err := syscall.Exec("/"+name, argv, os.Environ()); err != nil {
		fail("Failed to exec into Firecracker: %v", err)
	}
}

func copyExec(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
