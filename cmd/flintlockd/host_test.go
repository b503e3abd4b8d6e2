package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/liquidmetal-go/liquidmetal/test/netenv"
)

// TestHostNetworkCommand runs "flintlockd host network" in a fresh network
// namespace: --dry-run prints the plan and changes nothing, apply sets the
// network up, a second apply has nothing to do, teardown restores the
// namespace; a config error fails before anything is made.
func TestHostNetworkCommand(t *testing.T) {
	ns := netenv.NewNS(t, "lm-cli")
	ns.Run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	ns.Run("ip", "link", "set", "eth0", "up")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "hostnet.yaml")
	write := func(body string) {
		if err := os.WriteFile(cfg, []byte("stateDir: "+dir+"/state\n"+body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("parentInterface: eth0\nbridge: lmbr0\naddress: 10.70.0.1/24\ndhcp: {range: 10.70.0.100-10.70.0.120}\nmanagementPorts: [9090]\n")
	flintlockd := func(args ...string) (string, error) {
		var out bytes.Buffer
		var err error
		ns.Do(func() {
			root := newRootCommand()
			root.SetArgs(args)
			root.SetOut(&out)
			root.SetErr(&out)
			err = root.ExecuteContext(context.Background())
		})
		return out.String(), err
	}
	t.Cleanup(func() { _, _ = flintlockd("host", "network", "teardown", "--config", cfg) })

	before := ns.Snapshot()
	out, err := flintlockd("host", "network", "apply", "--dry-run", "--config", cfg)
	if err != nil || !strings.HasPrefix(out, "would create bridge lmbr0\nwould attach eth0 to bridge lmbr0\n") ||
		!strings.Contains(out, "would start dnsmasq on lmbr0") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if got := ns.Snapshot(); got != before {
		t.Fatalf("dry run changed the namespace:\n%s", netenv.Diff(before, got))
	}
	if out, err = flintlockd("host", "network", "apply", "--config", cfg); err != nil || !strings.Contains(out, "add address 10.70.0.1/24 to lmbr0\n") {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if a := ns.Run("ip", "-4", "-o", "addr", "show", "lmbr0"); !strings.Contains(a, "10.70.0.1/24") {
		t.Errorf("lmbr0: %s", a)
	}
	applied := ns.Snapshot()
	if out, err = flintlockd("host", "network", "apply", "--config", cfg); err != nil || out != "nothing to do\n" {
		t.Errorf("second apply: %v\n%s", err, out)
	}
	if got := ns.Snapshot(); got != applied {
		t.Errorf("second apply changed the namespace:\n%s", netenv.Diff(applied, got))
	}
	if out, err = flintlockd("host", "network", "teardown", "--config", cfg); err != nil || !strings.Contains(out, "delete link lmbr0\n") {
		t.Errorf("teardown: %v\n%s", err, out)
	}
	if got := ns.Snapshot(); got != before {
		t.Errorf("teardown did not restore the namespace:\n%s", netenv.Diff(before, got))
	}

	// Errors: no config; a duplicate static MAC; a missing parent.
	if _, err := flintlockd("host", "network", "apply"); err == nil || !strings.Contains(err.Error(), "--config is required") {
		t.Errorf("no --config: %v", err)
	}
	write("parentInterface: eth0\nbridge: lmbr0\naddress: 10.70.0.1/24\ndhcp: {range: 10.70.0.100-10.70.0.120}\n" +
		"staticLeases:\n- {mac: \"02:00:00:00:00:01\", ip: 10.70.0.5}\n- {mac: \"02:00:00:00:00:01\", ip: 10.70.0.6}\n")
	if _, err := flintlockd("host", "network", "apply", "--config", cfg); err == nil || !strings.Contains(err.Error(), "duplicate MAC 02:00:00:00:00:01") {
		t.Errorf("duplicate MAC: %v", err)
	}
	write("parentInterface: eth3\nbridge: lmbr0\naddress: 10.70.0.1/24\n")
	if _, err := flintlockd("host", "network", "apply", "--config", cfg); err == nil || !strings.Contains(err.Error(), `parentInterface: "eth3" not found`) {
		t.Errorf("missing parent: %v", err)
	}
	if got := ns.Snapshot(); got != before {
		t.Errorf("a failed apply changed the namespace:\n%s", netenv.Diff(before, got))
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); !os.IsNotExist(err) {
		t.Errorf("state folder after teardown and failed applies: %v", err)
	}
}
