package cloudhypervisor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm"
	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// virtiofsdCandidates are where distributions install virtiofsd: the Rust
// daemon in PATH or libexec, QEMU's C daemon under lib/qemu.
var virtiofsdCandidates = []string{"virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"}

// fsSocketName is the socket of the virtiofsd serving share i of VM uid;
// the uid in the name is what finds the daemon again.
func fsSocketName(uid string, i int) string { return fmt.Sprintf("virtiofs-%s-%d.sock", uid, i) }

// virtiofsdArgs is the command line of the daemon for one share. The
// options are those the C and the Rust virtiofsd both take.
func virtiofsdArgs(binary, socket string, sd vmm.SharedDir) []string {
	a := []string{binary, "--socket-path=" + socket, "-o", "source=" + sd.HostPath, "-o", "cache=auto"}
	if sd.ReadOnly {
		a = append(a, "--readonly") // the Rust virtiofsd only
	}
	return a
}

// virtiofsdUID returns the VM uid of a virtiofsd argument vector started
// by the provider, or "".
func virtiofsdUID(argv []string) string {
	if len(argv) == 0 || !strings.Contains(filepath.Base(argv[0]), "virtiofsd") {
		return ""
	}
	for _, a := range argv[1:] {
		if s, ok := strings.CutPrefix(a, "--socket-path="); ok {
			name, ok := strings.CutPrefix(filepath.Base(s), "virtiofs-")
			if !ok {
				return ""
			}
			if i := strings.LastIndexByte(name, '-'); i > 0 {
				return name[:i]
			}
		}
	}
	return ""
}

// startVirtiofsd starts one virtiofsd per shared folder, detached like the
// VMM, and waits for their sockets. They serve one connection, Cloud
// Hypervisor's, and exit when it ends. It returns the sockets as Cloud
// Hypervisor is given them.
func (p *Provider) startVirtiofsd(ctx context.Context, vm vmm.VM, logf *os.File) ([]string, error) {
	if len(vm.SharedDirs) == 0 {
		return nil, nil
	}
	// No VMM runs (Start checked), so any daemon of this VM is a leftover.
	p.stopVirtiofsd(vm.UID)
	var sockets []string
	var waits []chan struct{}
	for i, sd := range vm.SharedDirs {
		name := fsSocketName(vm.UID, i)
		if err := process.RemoveStale(filepath.Join(vm.Dir, name)); err != nil {
			return nil, err
		}
		sock := process.SocketArg(vm.Dir, name)
		argv := virtiofsdArgs(p.virtiofsd, sock, sd)
		cmd := &exec.Cmd{Path: p.virtiofsd, Args: argv, Dir: vm.Dir, Stdout: logf, Stderr: logf}
		if err := process.StartDetached(cmd); err != nil {
			return nil, fmt.Errorf("virtiofsd for %q: %w", sd.Tag, err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }() // reap
		sockets = append(sockets, sock)
		waits = append(waits, done)
	}
	deadline := time.Now().Add(p.opts.StartTimeout)
	for i := range sockets {
		path := filepath.Join(vm.Dir, fsSocketName(vm.UID, i))
		for {
			if _, err := os.Stat(path); err == nil {
				// The VMM connects to it: an unprivileged one needs write.
				if !p.opts.User.IsRoot() {
					if err := os.Chown(path, int(p.opts.User.UID), int(p.opts.User.GID)); err != nil {
						return nil, fmt.Errorf("virtiofsd socket: %w", err)
					}
				}
				break
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			select {
			case <-waits[i]:
				return nil, fmt.Errorf("virtiofsd for %q exited during start (see %s)", vm.SharedDirs[i].Tag, process.LogFile)
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("virtiofsd for %q did not create its socket", vm.SharedDirs[i].Tag)
			}
		}
	}
	return sockets, nil
}

// stopVirtiofsd ends the virtiofsd daemons of VM uid that still run.
func (p *Provider) stopVirtiofsd(uid string) {
	pids, err := process.Find(func(argv []string) bool { return virtiofsdUID(argv) == uid })
	if err != nil {
		p.log.Warn("cannot look for virtiofsd", "uid", uid, "error", err)
		return
	}
	for _, pid := range pids {
		h, err := process.Open(pid)
		if err != nil {
			continue
		}
		if argv, err := process.Cmdline(pid); err == nil && virtiofsdUID(argv) == uid {
			_ = h.Signal(syscall.SIGTERM)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if h.Wait(ctx) != nil {
				_ = h.Signal(syscall.SIGKILL)
				kctx, kcancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = h.Wait(kctx)
				kcancel()
			}
			cancel()
		}
		h.Close()
	}
}
