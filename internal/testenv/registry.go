package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// RegistryVersion is the version of github.com/distribution/distribution/v3
// whose cmd/registry is built and run as the local OCI registry.
const RegistryVersion = "v3.1.2"

// Registry is a running CNCF distribution registry on loopback, serving
// plain HTTP with filesystem storage in its own folder.
type Registry struct {
	// Host is "127.0.0.1:PORT", usable as the host part of image references.
	Host string
	// Dir holds the config, the storage and the log of this registry.
	Dir string

	cmd    *exec.Cmd
	exited chan struct{}
	logf   string
}

// StartRegistry starts binary (a distribution registry) listening on a free
// loopback port with its storage under dir, and returns once /v2/ answers.
// When htpasswdFile is not empty, the registry requires basic auth checked
// against that file (bcrypt entries only).
func StartRegistry(ctx context.Context, binary, dir, htpasswdFile string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("registry folder: %w", err)
	}
	var lastErr error
	// The free port is found by binding and closing; another process may
	// take it before the registry binds, so a few attempts are made.
	for attempt := 0; attempt < 3; attempt++ {
		r, err := startRegistryOnce(ctx, binary, dir, htpasswdFile)
		if err == nil {
			return r, nil
		}
		lastErr = err
		if ctx.Err() != nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func startRegistryOnce(ctx context.Context, binary, dir, htpasswdFile string) (*Registry, error) {
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	var auth string
	if htpasswdFile != "" {
		abs, err := filepath.Abs(htpasswdFile)
		if err != nil {
			return nil, err
		}
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: liquidmetal\n    path: %q\n", abs)
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  secret: %q
%s`, filepath.Join(dir, "storage"), host, hex.EncodeToString(secret), auth)
	configFile := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		return nil, fmt.Errorf("registry config: %w", err)
	}
	logFile := filepath.Join(dir, "registry.log")
	logOut, err := os.Create(logFile)
	if err != nil {
		return nil, fmt.Errorf("registry log: %w", err)
	}
	defer logOut.Close() // the child keeps its own descriptor

	// Not exec.CommandContext: the registry outlives the start-up ctx and
	// is ended by Stop.
	cmd := exec.Command(binary, "serve", configFile)
	cmd.Stdout = logOut
	cmd.Stderr = logOut
	// No telemetry exporter: nothing listens for it here.
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none", "OTEL_SDK_DISABLED=true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start registry %s: %w", binary, err)
	}
	r := &Registry{Host: host, Dir: dir, cmd: cmd, exited: make(chan struct{}), logf: logFile}
	go func() {
		_ = cmd.Wait()
		close(r.exited)
	}()
	if err := r.waitReady(ctx, 30*time.Second); err != nil {
		_ = r.Stop()
		return nil, err
	}
	return r, nil
}

// waitReady polls /v2/ until it answers (200, or 401 with auth enabled).
func (r *Registry) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.Host+"/v2/", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
		}
		select {
		case <-r.exited:
			return fmt.Errorf("registry exited before answering: %s", r.logTail())
		case <-ctx.Done():
			return fmt.Errorf("registry on %s not answering: %w: %s", r.Host, ctx.Err(), r.logTail())
		case <-tick.C:
		}
	}
}

func (r *Registry) logTail() string {
	b, _ := os.ReadFile(r.logf)
	b = bytes.TrimSpace(b)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Stop ends the registry (SIGTERM, then SIGKILL after 5 s) and waits for it.
// Its folder is left in place. Stop is safe to call more than once.
func (r *Registry) Stop() error {
	select {
	case <-r.exited:
		return nil
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
		return nil
	case <-time.After(5 * time.Second):
	}
	if err := r.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill registry: %w", err)
	}
	<-r.exited
	return nil
}

// NewRegistry starts a registry for a test, with storage in a temporary
// folder, building the binary first if it is not cached yet. It is stopped
// when the test ends.
func NewRegistry(t testing.TB) *Registry {
	t.Helper()
	ctx := context.Background()
	bin, err := RegistryBinary(ctx)
	if err != nil {
		t.Fatalf("registry binary: %v", err)
	}
	r, err := StartRegistry(ctx, bin, t.TempDir(), "")
	if err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("stop registry: %v", err)
		}
	})
	return r
}

// RegistryBinary returns the path of the cached registry binary
// (<repo>/bin/cache/registry-<version>/registry), building it with
// hack/build-registry.sh when it is missing (a few minutes, once).
func RegistryBinary(ctx context.Context) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "cache", "registry-"+RegistryVersion, "registry")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() {
		return bin, nil
	}
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "hack", "build-registry.sh"))
	cmd.Env = append(os.Environ(), "REGISTRY_VERSION="+RegistryVersion)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build registry: %w: %s", err, bytes.TrimSpace(out))
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("build registry: %w", err)
	}
	return bin, nil
}

const modulePath = "github.com/liquidmetal-go/liquidmetal"

// RepoRoot returns the root of the source tree (the folder holding the
// project's go.mod), found by walking up from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module "+modulePath+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod of %s not found above the working directory: %w", modulePath, errdefs.ErrNotFound)
		}
		dir = parent
	}
}

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
