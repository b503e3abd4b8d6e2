// Package process owns the host side of VMM processes that every provider
// (QEMU, Firecracker, Cloud Hypervisor) shares:
//   - finding a process by its command line in /proc, telling live
//     processes from zombies, reading pid files, starting children
//     detached from the daemon, and waiting on or signalling processes
//     through pidfds, which also works for processes an earlier daemon
//     started;
//   - a Supervisor that starts a provider's VMMs, finds them again by the
//     VM uid on their command line (also after a restart of flintlockd),
//     serialises their starts, tells their status and when they exit, and
//     stops them with escalation;
//   - the files a VMM keeps in its VM folder (pid file, command line,
//     console and VMM logs with the provider's notes, the exit reason read
//     back from them), the folder lock that serialises a VM's starts and
//     stops, and unix sockets of any path length;
//   - Do, a one-request HTTP client over a unix socket that can pass file
//     descriptors along (SCM_RIGHTS), for the VMMs with a REST API;
//   - least privilege: the VMM user's identity and the grants in its VM
//     folder (User), and the host ends of network devices opened for the
//     VMM (OpenNet).
package process

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
)

// procRoot is where procfs is mounted.
const procRoot = "/proc"

// Cmdline returns the argument vector of process pid. It is empty for
// zombies and kernel threads.
func Cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return nil, fmt.Errorf("process %d: %w", pid, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("process %d: %w", pid, err)
	}
	return splitCmdline(b), nil
}

func splitCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// State returns the one-letter state of process pid from /proc/PID/stat
// ('R', 'S', 'D', 'Z', ...).
func State(pid int) (byte, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return 0, fmt.Errorf("process %d: %w", pid, errdefs.ErrNotFound)
		}
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	// "pid (comm) S ...": comm may hold spaces and parentheses, so the
	// state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, fmt.Errorf("process %d: malformed stat %q", pid, b)
	}
	return b[i+2], nil
}

// Running reports whether process pid exists and has not exited: zombies
// (Z) and dead tasks (X) count as exited.
func Running(pid int) bool {
	if pid <= 0 {
		return false
	}
	s, err := State(pid)
	return err == nil && s != 'Z' && s != 'X'
}

// Find returns the running processes whose argument vector satisfies match,
// in ascending pid order.
func Find(match func(argv []string) bool) ([]int, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		argv, err := Cmdline(pid)
		if err != nil || len(argv) == 0 || !match(argv) {
			continue // gone meanwhile, kernel thread, zombie or not ours
		}
		if Running(pid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil // ReadDir sorts by name, not numerically
}

// ReadPidFile returns the pid written in path. A missing file is
// errdefs.ErrNotFound.
func ReadPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("pid file %q: %w", path, errdefs.ErrNotFound)
		}
		return 0, fmt.Errorf("pid file %q: %w", path, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %q: bad content %q", path, b)
	}
	return pid, nil
}

// StartDetached starts cmd in a session of its own, so that it has no
// controlling terminal and signals sent to the daemon's process group (a
// Ctrl-C, a SIGHUP at logout) do not reach it; it outlives the daemon. A nil
// Stdin/Stdout/Stderr is connected to /dev/null by os/exec. The caller still
// owns the child while it lives: it must Wait for it so no zombie remains.
func StartDetached(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return nil
}

// LookPath finds a program as exec.LookPath does and returns its absolute
// path, which stays valid whatever folder the program is started in.
func LookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	return filepath.Abs(p)
}
