package process

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
)

// Virtiofsd: one daemon per shared folder (virtio-fs), a helper process
// next to a VM's VMM. It runs as root (it serves the folder with the
// owners and modes the guest sets) in its own sandbox (its default,
// namespaces), detached like the VMM, and listens on a socket in the VM
// folder whose name carries the VM uid: that name on its command line is
// what finds it again, also after a restart of flintlockd. It serves one
// connection, the VMM's, and exits when that ends.

// VirtiofsdCandidates are where distributions install virtiofsd: the Rust
// daemon in PATH or libexec, QEMU's C daemon under lib/qemu.
var VirtiofsdCandidates = []string{"virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"}

// LookupVirtiofsd returns the virtiofsd to run (see LookPath): explicit
// when given (an error when it is not found), else the first of
// VirtiofsdCandidates found, else "".
func LookupVirtiofsd(explicit string) (string, error) {
	if explicit != "" {
		p, err := LookPath(explicit)
		if err != nil {
			return "", fmt.Errorf("virtiofsd: %w", err)
		}
		return p, nil
	}
	for _, c := range VirtiofsdCandidates {
		if p, err := LookPath(c); err == nil {
			return p, nil
		}
	}
	return "", nil
}

// VirtiofsSocketName is the socket, in the VM folder, of the virtiofsd
// serving share i of VM uid.
func VirtiofsSocketName(uid string, i int) string { return fmt.Sprintf("virtiofs-%s-%d.sock", uid, i) }

// VirtiofsdUID returns the VM uid of a virtiofsd argument vector made by
// VirtiofsdArgs, or "".
func VirtiofsdUID(argv []string) string {
	if len(argv) == 0 || !strings.Contains(filepath.Base(argv[0]), "virtiofsd") {
		return ""
	}
	for _, a := range argv[1:] {
		s, ok := strings.CutPrefix(a, "--socket-path=")
		if !ok {
			continue
		}
		name, ok := strings.CutPrefix(filepath.Base(s), "virtiofs-")
		if !ok {
			return ""
		}
		name = strings.TrimSuffix(name, ".sock")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			return name[:i]
		}
		return ""
	}
	return ""
}

// VirtiofsdArgs is the command line of the daemon serving sd on socket.
// The options are those QEMU's C and the Rust virtiofsd both take, but
// --readonly, which only the Rust one has (see Virtiofsd.ReadOnly).
func VirtiofsdArgs(binary, socket string, sd vmm.SharedDir) []string {
	a := []string{binary, "--socket-path=" + socket, "-o", "source=" + sd.HostPath, "-o", "cache=auto"}
	if sd.ReadOnly {
		a = append(a, "--readonly")
	}
	return a
}

// Virtiofsd starts and stops the virtiofsd daemons of a provider's VMs.
// It is safe for concurrent use; a provider serialises the starts and
// stops of one VM.
type Virtiofsd struct {
	// Binary is the daemon (see LookupVirtiofsd).
	Binary string
	// StartTimeout bounds how long Start waits for the sockets to listen
	// (default 10s).
	StartTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	readOnly func() bool
	once     sync.Once
}

func (v *Virtiofsd) init() {
	v.once.Do(func() {
		if v.StartTimeout <= 0 {
			v.StartTimeout = 10 * time.Second
		}
		if v.Logger == nil {
			v.Logger = slog.Default()
		}
		v.readOnly = sync.OnceValue(func() bool {
			out, _ := exec.Command(v.Binary, "--help").CombinedOutput()
			return strings.Contains(string(out), "--readonly")
		})
	})
}

// ReadOnly reports whether the daemon can serve a folder read only
// (--readonly; QEMU's C virtiofsd cannot).
func (v *Virtiofsd) ReadOnly() bool {
	v.init()
	return v.readOnly()
}

// Start starts one virtiofsd per share of VM uid, whose folder is dir,
// and returns once each listens, with the sockets as a VMM running in dir
// is given them (SocketArg). Daemons of the VM left from an earlier start
// are ended first: the caller knows that no VMM of the VM runs. out
// receives their output. When u is not root, each socket is made
// root:<gid> 0660, so that the VMM user can connect and nobody else.
// On error, nothing started is left running.
func (v *Virtiofsd) Start(ctx context.Context, uid, dir string, shares []vmm.SharedDir, out *os.File, u User) (_ []string, err error) {
	v.init()
	if len(shares) == 0 {
		return nil, nil
	}
	for _, sd := range shares {
		if sd.ReadOnly && !v.ReadOnly() {
			return nil, fmt.Errorf("shared folder %q: read only needs a virtiofsd with --readonly, %s has none: %w", sd.Tag, v.Binary, errdefs.ErrFailedPrecondition)
		}
		st, err := os.Stat(sd.HostPath)
		if err != nil || !st.IsDir() {
			return nil, fmt.Errorf("shared folder %q: %s is not a folder on the host: %w", sd.Tag, sd.HostPath, errdefs.ErrFailedPrecondition)
		}
	}
	if err := v.Stop(uid); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if serr := v.Stop(uid); serr != nil {
				v.Logger.Warn("cannot stop virtiofsd after a failed start", "uid", uid, "error", serr)
			}
		}
	}()
	var sockets []string
	var exits []chan struct{}
	for i, sd := range shares {
		name := VirtiofsSocketName(uid, i)
		if err := RemoveStale(filepath.Join(dir, name)); err != nil {
			return nil, err
		}
		sock := SocketArg(dir, name)
		cmd := &exec.Cmd{Path: v.Binary, Args: VirtiofsdArgs(v.Binary, sock, sd), Dir: dir, Stdout: out, Stderr: out}
		if err := StartDetached(cmd); err != nil {
			return nil, fmt.Errorf("virtiofsd for %q: %w", sd.Tag, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }() // reap while we are its parent
		sockets = append(sockets, sock)
		exits = append(exits, exited)
		v.Logger.Info("virtiofsd started", "uid", uid, "tag", sd.Tag, "pid", cmd.Process.Pid, "folder", sd.HostPath)
	}
	wctx, cancel := context.WithTimeout(ctx, v.StartTimeout)
	defer cancel()
	for i, sock := range sockets {
		path := filepath.Join(dir, VirtiofsSocketName(uid, i))
		if err := waitListening(wctx, sock, exits[i]); err != nil {
			return nil, fmt.Errorf("virtiofsd for %q: %w (see %s)", shares[i].Tag, err, LogFile)
		}
		if !u.IsRoot() {
			if err := os.Chown(path, 0, int(u.GID)); err != nil {
				return nil, fmt.Errorf("grant %s to the vmm user: %w", path, err)
			}
			if err := os.Chmod(path, 0o660); err != nil {
				return nil, fmt.Errorf("grant %s to the vmm user: %w", path, err)
			}
		}
	}
	return sockets, nil
}

// waitListening waits until the unix socket bound as name (as given to
// bind: a path or a name relative to the binder's folder) listens. A
// socket file can exist before listen(2); /proc/net/unix tells, without
// connecting (virtiofsd serves the first connection only).
func waitListening(ctx context.Context, name string, exited <-chan struct{}) error {
	wait := time.Millisecond
	for {
		ok, err := unixListening(name)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited during start")
		case <-ctx.Done():
			return fmt.Errorf("socket did not listen: %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// soAcceptCon is the listening flag in /proc/net/unix.
const soAcceptCon = 0x10000

// unixListening reports whether a listening unix socket is bound as name
// in this network namespace.
func unixListening(name string) (bool, error) {
	f, err := os.Open(filepath.Join(procRoot, "net", "unix"))
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	sc.Scan() // header
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[7] != name {
			continue
		}
		var flags uint64
		if _, err := fmt.Sscanf(fields[3], "%x", &flags); err == nil && flags&soAcceptCon != 0 {
			return true, nil
		}
	}
	return false, sc.Err()
}

// Pids returns the running virtiofsd processes of VM uid (a daemon in its
// namespace sandbox is two: the one started and its child).
func (v *Virtiofsd) Pids(uid string) ([]int, error) {
	return Find(func(argv []string) bool { return VirtiofsdUID(argv) == uid })
}

// Stop ends the virtiofsd daemons of VM uid that still run: SIGTERM, then
// SIGKILL after 2 s. None running is no error.
func (v *Virtiofsd) Stop(uid string) error {
	v.init()
	pids, err := v.Pids(uid)
	if err != nil {
		return fmt.Errorf("vm %q: look for virtiofsd: %w", uid, err)
	}
	var errs []error
	for _, pid := range pids {
		h, err := Open(pid)
		if err != nil {
			continue // gone meanwhile
		}
		// Checked after Open: the pid cannot have been reused since.
		if argv, err := Cmdline(pid); err != nil || VirtiofsdUID(argv) != uid {
			h.Close()
			continue
		}
		_ = h.Signal(syscall.SIGTERM)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if h.Wait(ctx) != nil {
			_ = h.Signal(syscall.SIGKILL)
			kctx, kcancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := h.Wait(kctx); err != nil {
				errs = append(errs, fmt.Errorf("virtiofsd %d survived SIGKILL: %w", pid, err))
			}
			kcancel()
		}
		cancel()
		h.Close()
		v.Logger.Info("virtiofsd stopped", "uid", uid, "pid", pid)
	}
	return errors.Join(errs...)
}

// HasVirtiofsSockets reports whether dir holds a virtiofsd socket of VM
// uid, i.e. whether daemons may have been started for it; a missing
// folder says nothing, and counts as true.
func HasVirtiofsSockets(dir, uid string) bool {
	m, err := filepath.Glob(filepath.Join(dir, "virtiofs-"+uid+"-*.sock"))
	if err != nil {
		return true
	}
	if len(m) > 0 {
		return true
	}
	_, err = os.Stat(dir)
	return errors.Is(err, fs.ErrNotExist)
}
