package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
)

// ContainerdBinary is the containerd daemon started by StartContainerd
// (Debian's containerd 1.6.x package). It is looked up in PATH when not
// absolute.
var ContainerdBinary = "containerd"

// Containerd is a private containerd daemon on its own socket, with its
// root and state folders under Dir and the CRI plugin disabled.
type Containerd struct {
	// Address is the daemon's gRPC unix socket.
	Address string
	// Root and State are the daemon's root and state folders.
	Root  string
	State string
	// Dir holds the config, the log, the socket, Root and State.
	Dir string

	cmd    *exec.Cmd
	exited chan struct{}
	logf   string
}

// ContainerdOption changes the private daemon's configuration.
type ContainerdOption func(*containerdConfig)

type containerdConfig struct {
	disabled []string
}

// WithDisabledPlugins disables more containerd plugins by id (for example
// "io.containerd.snapshotter.v1.overlayfs"), on top of those always
// disabled (CRI and the snapshotters that cannot work on a plain host).
func WithDisabledPlugins(ids ...string) ContainerdOption {
	return func(c *containerdConfig) { c.disabled = append(c.disabled, ids...) }
}

// defaultDisabledPlugins are plugins of no use to flintlockd that only
// log errors on a plain host (or, for CRI, start a lot of machinery).
var defaultDisabledPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.snapshotter.v1.aufs",
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.snapshotter.v1.zfs",
	"io.containerd.tracing.processor.v1.otlp",
	"io.containerd.internal.v1.tracing",
}

// StartContainerd starts a containerd daemon whose socket, root, state,
// config and log all live under dir, and returns once it answers a Version
// request. Keep dir short: the socket path must fit in 108 bytes. The
// daemon outlives ctx (ctx only bounds the start-up); Stop ends it.
func StartContainerd(ctx context.Context, dir string, opts ...ContainerdOption) (*Containerd, error) {
	var cfg containerdConfig
	for _, o := range opts {
		o(&cfg)
	}
	bin, err := exec.LookPath(ContainerdBinary)
	if err != nil {
		return nil, fmt.Errorf("containerd binary %q (Debian package containerd): %w: %w", ContainerdBinary, errdefs.ErrNotFound, err)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := &Containerd{
		Address: filepath.Join(dir, "c.sock"),
		Root:    filepath.Join(dir, "root"),
		State:   filepath.Join(dir, "state"),
		Dir:     dir,
		exited:  make(chan struct{}),
		logf:    filepath.Join(dir, "containerd.log"),
	}
	if n := len(c.Address + ".ttrpc"); n >= 108 {
		return nil, fmt.Errorf("containerd socket path %s is %d bytes, too long for a unix socket: %w", c.Address, n, errdefs.ErrInvalidArgument)
	}
	for _, d := range []string{c.Root, c.State} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("containerd folder: %w", err)
		}
	}
	disabled := append(append([]string{}, defaultDisabledPlugins...), cfg.disabled...)
	quoted := make([]string, len(disabled))
	for i, id := range disabled {
		quoted[i] = fmt.Sprintf("%q", id)
	}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = [%s]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, c.Root, c.State, strings.Join(quoted, ", "), c.Address, c.Address+".ttrpc", filepath.Join(c.Root, "opt"))
	configFile := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		return nil, fmt.Errorf("containerd config: %w", err)
	}
	logOut, err := os.Create(c.logf)
	if err != nil {
		return nil, fmt.Errorf("containerd log: %w", err)
	}
	defer logOut.Close() // the child keeps its own descriptor

	// Not exec.CommandContext: the daemon outlives the start-up ctx.
	cmd := exec.Command(bin, "--config", configFile)
	cmd.Stdout = logOut
	cmd.Stderr = logOut
	// Own process group, so a terminal's Ctrl-C reaches the caller first
	// and Stop decides; killed with its parent so a crashed test leaves no
	// daemon behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	c.cmd = cmd
	go func() {
		_ = cmd.Wait()
		close(c.exited)
	}()
	if err := c.waitReady(ctx, 30*time.Second); err != nil {
		_ = c.Stop()
		return nil, err
	}
	return c, nil
}

// waitReady polls the daemon's Version until it answers.
func (c *Containerd) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cl, err := client.New(c.Address, client.WithTimeout(time.Second))
	if err != nil {
		return fmt.Errorf("containerd client: %w", err)
	}
	defer cl.Close()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(c.Address); err == nil {
			vctx, vcancel := context.WithTimeout(ctx, time.Second)
			_, err := cl.Version(vctx)
			vcancel()
			if err == nil {
				return nil
			}
		}
		select {
		case <-c.exited:
			return fmt.Errorf("containerd exited before answering: %s", c.LogTail())
		case <-ctx.Done():
			return fmt.Errorf("containerd on %s not answering: %w: %s", c.Address, ctx.Err(), c.LogTail())
		case <-tick.C:
		}
	}
}

// Client returns a new client of this daemon with the given default
// namespace (none when ns is empty). The caller closes it.
func (c *Containerd) Client(ns string) (*client.Client, error) {
	var opts []client.Opt
	if ns != "" {
		opts = append(opts, client.WithDefaultNamespace(ns))
	}
	return client.New(c.Address, opts...)
}

// LogTail returns the last lines of the daemon's log.
func (c *Containerd) LogTail() string {
	b, _ := os.ReadFile(c.logf)
	b = bytes.TrimSpace(b)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// Stop ends the daemon (SIGTERM, then SIGKILL after 10 s), waits for it,
// and unmounts anything left mounted under its folder. The folder itself is
// left in place. Stop is safe to call more than once.
func (c *Containerd) Stop() error {
	var errs []error
	select {
	case <-c.exited:
	default:
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				errs = append(errs, fmt.Errorf("kill containerd: %w", err))
			}
			<-c.exited
		}
	}
	if err := mount.UnmountRecursive(c.Dir, 0); err != nil {
		errs = append(errs, fmt.Errorf("unmount under %s: %w", c.Dir, err))
	}
	return errors.Join(errs...)
}

// Mounts returns the mount points under the daemon's folder (none once the
// daemon is stopped).
func (c *Containerd) Mounts() ([]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(c.Dir))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range infos {
		out = append(out, m.Mountpoint)
	}
	return out, nil
}

// NewContainerd starts a private containerd for a test in a new short
// temporary folder, and stops it and removes the folder when the test ends.
// It skips the test, loudly, when the containerd binary is not installed.
func NewContainerd(t testing.TB, opts ...ContainerdOption) *Containerd {
	t.Helper()
	if _, err := exec.LookPath(ContainerdBinary); err != nil {
		t.Skipf("SKIPPED: containerd is not installed (apt-get install containerd): %v", err)
	}
	// Not t.TempDir: its paths carry the test name and can push the socket
	// path past the unix limit.
	dir, err := os.MkdirTemp("", "ctd")
	if err != nil {
		t.Fatal(err)
	}
	c, err := StartContainerd(context.Background(), dir, opts...)
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatalf("start containerd: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (tail):\n%s", c.LogTail())
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
			return // never remove a folder that may still hold mounts
		}
		if left, err := c.Mounts(); err != nil || len(left) > 0 {
			t.Errorf("mounts left under %s after stop: %v %v", dir, left, err)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove containerd folder: %v", err)
		}
	})
	return c
}
