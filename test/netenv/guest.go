package netenv

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/hostnet"
	"github.com/liquidmetal-go/liquidmetal/internal/metadata"
	"github.com/liquidmetal-go/liquidmetal/internal/network"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/internal/testimages"
)

var (
	artifactsOnce sync.Once
	artifacts     *testimages.Artifacts
	artifactsErr  error
)

// Artifacts builds (or finds in the repository's cache) the test guest.
func Artifacts(t testing.TB) *testimages.Artifacts {
	t.Helper()
	artifactsOnce.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			artifactsErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		artifacts, artifactsErr = testimages.Build(ctx, filepath.Join(root, "bin", "cache", "guest"))
	})
	if artifactsErr != nil {
		t.Fatalf("guest artifacts: %v", artifactsErr)
	}
	return artifacts
}

// GuestSpec is a test guest: a VM spec as flintlockd would get it (one
// TAP interface on the host's bridge) and its user-data script.
type GuestSpec struct {
	// UID and Name identify the VM (Name is also its host name).
	UID, Name string
	// MAC is the guest MAC; empty: network.GuestMAC, as flintlockd.
	MAC string
	// Address is a static address; nil: DHCP.
	Address *types.StaticAddress
	// UserData is the user-data (a "#!" script runs in the guest).
	UserData string
	// Metadata: register the VM with the host's metadata service.
	Metadata bool
}

// Guest is a running QEMU guest.
type Guest struct {
	Spec GuestSpec
	// Device is the host TAP; MAC the guest's.
	Device, MAC string
	// Console is the serial console log.
	Console string
	// Docs are the NoCloud documents (cidata disk and metadata service).
	Docs map[string][]byte
	cmd  *exec.Cmd
	done chan struct{}
}

// Boot starts the guest on host h: its TAP (internal/network, on the
// bridge), its cidata disk (internal/metadata, with a generated
// network-config), its registration with the metadata service when asked,
// and QEMU inside the host's namespace. All of it goes when the test ends.
func (h *Host) Boot(t *testing.T, s GuestSpec) *Guest {
	t.Helper()
	a := Artifacts(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("SKIPPED: qemu-system-x86_64 is not installed (qemu-system-x86): %v", err)
	}
	iface := &types.NetworkInterface{DeviceId: "eth0", Type: types.NetworkInterface_TAP, Address: s.Address}
	if s.MAC != "" {
		iface.GuestMac = &s.MAC
	}
	mgr := network.New(network.Options{DefaultBridge: h.Config.Bridge})
	var dev network.Device
	h.Do(func() { dev, err = mgr.Ensure(context.Background(), s.UID, 0, iface) })
	if err != nil {
		t.Fatalf("[%s] TAP for %s: %v", h.Name, s.Name, err)
	}
	t.Cleanup(func() {
		h.Do(func() { err = mgr.Remove(context.Background(), s.UID, 1) })
		if err != nil {
			t.Errorf("[%s] removing %s's TAP: %v", h.Name, s.Name, err)
		}
	})
	mac := dev.MAC
	iface.GuestMac = &mac

	spec := &types.MicroVMSpec{
		Id: s.Name, Namespace: "netenv", Uid: &s.UID,
		Kernel:     &types.Kernel{AddNetworkConfig: true},
		Interfaces: []*types.NetworkInterface{iface},
		Metadata:   map[string]string{"user-data": base64.StdEncoding.EncodeToString([]byte(s.UserData))},
	}
	docs, err := metadata.Documents(spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cidata := filepath.Join(dir, "cidata.img")
	if err := metadata.WriteCIDataDisk(docs, cidata); err != nil {
		t.Fatal(err)
	}
	if s.Metadata {
		if h.MDS == nil {
			t.Fatalf("[%s] no metadata service: call StartMDS", h.Name)
		}
		if err := h.MDS.Register(s.UID, []string{dev.Name}, docs); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.MDS.Unregister(s.UID) })
	}

	g := &Guest{Spec: s, Device: dev.Name, MAC: mac, Console: filepath.Join(dir, "console.log"), Docs: docs, done: make(chan struct{})}
	args := []string{
		"-M", "microvm,accel=tcg,rtc=on", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-name", "guest=" + s.UID,
		"-serial", "file:" + g.Console,
		"-kernel", a.Vmlinuz, "-initrd", a.Initrd,
		"-append", "console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz=2000000 tsc=reliable",
		"-drive", "id=cidata,file=" + cidata + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=cidata",
		"-netdev", "tap,id=n0,ifname=" + dev.Name + ",script=no,downscript=no",
		"-device", "virtio-net-device,netdev=n0,mac=" + mac,
	}
	g.cmd = h.Command(qemu, args...)
	log, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	g.cmd.Stdout, g.cmd.Stderr = log, log
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	go func() { _ = g.cmd.Wait(); close(g.done) }()
	t.Cleanup(func() {
		_ = g.cmd.Process.Kill()
		<-g.done
		if t.Failed() {
			b, _ := os.ReadFile(g.Console)
			t.Logf("console of %s:\n%s", s.Name, tail(string(b), 80))
		}
	})
	return g
}

// Log is the console so far, without carriage returns.
func (g *Guest) Log() string {
	b, _ := os.ReadFile(g.Console)
	return strings.ReplaceAll(string(b), "\r", "")
}

// Wait waits until the console holds text and returns the console.
func (g *Guest) Wait(t *testing.T, text string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		log := g.Log()
		if strings.Contains(log, text) {
			return log
		}
		select {
		case <-g.done:
			t.Fatalf("QEMU of %s exited; console:\n%s", g.Spec.Name, tail(log, 60))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("console of %s has no %q after %s:\n%s", g.Spec.Name, text, timeout, tail(log, 60))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func yamlOf(c *hostnet.Config) ([]byte, error) {
	b, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("config to YAML: %w", err)
	}
	return b, nil
}
