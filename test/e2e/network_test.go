package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/mds"
	"github.com/liquidmetal-go/liquidmetal/internal/network"
	"github.com/liquidmetal-go/liquidmetal/test/framework"
	"github.com/liquidmetal-go/liquidmetal/test/netenv"
)

// TestNetworkThroughFlintlockd runs a flintlockd inside each host of a
// test/netenv network (bridge, dnsmasq on host A, NAT and filters by "host
// network apply"), listening on all of the host's addresses with its gRPC
// and metrics ports declared management ports. Through the API, a VM on
// host A with a TAP interface and add_network_config gets a DHCP lease,
// pings its host's bridge address, reaches the other host's VM (static
// address, created on host B's flintlockd) across the VLAN, reaches the
// "internet" through NAT, and cannot reach flintlockd's ports, which
// answer the host itself. Host A's flintlockd runs the metadata service:
// the VM reads its own instance-id and user-data from 169.254.169.254.
// Deleting the VMs removes their TAPs and the metadata service's rules for
// them; at the end each host network is torn down back to the namespace it
// was (netenv checks), so flintlockd left nothing on them.
func TestNetworkThroughFlintlockd(t *testing.T) {
	const grpcPort, metricsPort = 9090, 9091
	nenv := netenv.New(t, netenv.Options{Subnet: "10.51.0", ManagementPorts: []int{grpcPort, metricsPort}})
	a := nenv.Hosts[0]
	var daemons []*netenv.Flintlockd
	for i, h := range nenv.Hosts {
		// The client side of a pull runs in flintlockd: the registry, on
		// the test's loopback, is relayed into the host namespace.
		h.ForwardLoopback(t, env.Registry.Host)
		args := netDaemonArgs()
		if i == 0 {
			args = append(args, "--metadata-service", mds.DefaultAddress.String())
		}
		daemons = append(daemons, h.StartFlintlockd(t, env.Flintlockd,
			fmt.Sprintf("0.0.0.0:%d", grpcPort), fmt.Sprintf("0.0.0.0:%d", metricsPort), args...))
	}
	d, db := daemons[0], daemons[1]

	// From the host itself, the metrics port answers on the bridge address.
	resp, err := a.HTTPClient().Get(fmt.Sprintf("http://10.51.0.1:%d/healthz", metricsPort))
	if err != nil {
		t.Fatalf("the host cannot reach its own flintlockd: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("healthz from the host: %q", body)
	}

	ud := fmt.Sprintf(`#!/bin/sh
r() { echo "RESULT $*"; }
r addr "$(ip -4 -o addr show dev eth0 | awk '{ print $4 }')"
r gw "$(ip route | awk '$1 == "default" { print $3 }')"
ping -c 1 -W 2 10.51.0.1 >/dev/null && r ping-bridge ok || r ping-bridge failed
# vm2 boots on host B at the same time.
i=0; until ping -c 1 -W 1 10.51.0.60 >/dev/null; do i=$((i + 1)); [ $i -ge 90 ] && break; done
[ $i -lt 90 ] && r ping-vm2 ok || r ping-vm2 failed
r internet "$(timeout 10 wget -q -O- http://%[1]s/ || echo unreachable)"
r metrics "$(timeout 3 wget -q -O- http://10.51.0.1:%[2]d/healthz || echo unreachable)"
timeout 4 nc -w 2 10.51.0.1 %[3]d </dev/null; r grpc-nc-exit "$?"
r mds-id "$(timeout 10 wget -q -O- http://169.254.169.254/latest/meta-data/instance-id || echo unreachable)"
r mds-user-data-bytes "$(timeout 10 wget -q -O- http://169.254.169.254/latest/user-data | wc -c)"
r done
`, nenv.Internet.Addr, metricsPort, grpcPort)
	gw := "10.51.0.2"
	ud2 := `#!/bin/sh
r() { echo "RESULT $*"; }
r addr "$(ip -4 -o addr show dev eth0 | awk '{ print $4 }')"
r gw "$(ip route | awk '$1 == "default" { print $3 }')"
ping -c 1 -W 2 10.51.0.1 >/dev/null && r ping-host-a ok || r ping-host-a failed
r done
`
	uid2 := createVM(t, db, "net2", &types.NetworkInterface{DeviceId: "eth0", Type: types.NetworkInterface_TAP,
		Address: &types.StaticAddress{Address: "10.51.0.60/24", Gateway: &gw}}, ud2)
	uid := createVM(t, d, "net1", &types.NetworkInterface{DeviceId: "eth0", Type: types.NetworkInterface_TAP}, ud)
	ctx := context.Background()
	vm := waitCreated(t, d, uid)
	waitCreated(t, db, uid2)
	tap := vm.GetStatus().GetNetworkInterfaces()["eth0"].GetHostDeviceName()
	if l := a.Run("ip", "-o", "link", "show", tap); !strings.Contains(l, "master "+netenv.Bridge) {
		t.Errorf("TAP %q is not on %s: %s", tap, netenv.Bridge, l)
	}

	log := d.WaitConsole(t, d.VMDir("e2e", "net1", uid), "RESULT done", 3*time.Minute)
	r := guestResults(log)
	t.Logf("vm1: %v", r)
	if m := regexp.MustCompile(`^10\.51\.0\.(\d+)/24$`).FindStringSubmatch(r["addr"]); m == nil {
		t.Errorf("no DHCP address: %q", r["addr"])
	} else if n, _ := strconv.Atoi(m[1]); n < 100 || n > 150 {
		t.Errorf("leased %s, outside .100-.150", r["addr"])
	}
	for k, want := range map[string]string{
		"mds-id":              uid,
		"mds-user-data-bytes": strconv.Itoa(len(ud)),
		"gw":                  "10.51.0.1",
		"ping-bridge":         "ok",
		"ping-vm2":            "ok",
		"internet":            "INTERNET " + nenv.Internet.Token + " from 198.51.100.2",
		"metrics":             "unreachable",
		// busybox nc -w 2 gives up on a connection that is dropped or
		// refused (1); on the open gRPC port it would wait for data until
		// timeout kills it (143).
		"grpc-nc-exit": "1",
	} {
		if r[k] != want {
			t.Errorf("vm1 %s = %q, want %q", k, r[k], want)
		}
	}

	r2 := guestResults(d.WaitConsole(t, db.VMDir("e2e", "net2", uid2), "RESULT done", 3*time.Minute))
	for k, want := range map[string]string{"addr": "10.51.0.60/24", "gw": "10.51.0.2", "ping-host-a": "ok"} {
		if r2[k] != want {
			t.Errorf("vm2 %s = %q, want %q", k, r2[k], want)
		}
	}

	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; {
		if _, err := d.Client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid}); err != nil && strings.Contains(err.Error(), "not found") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("VM not deleted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if l := a.Run("ip", "-o", "link", "show"); strings.Contains(l, tap) {
		t.Errorf("TAP %s left after delete:\n%s", tap, l)
	}
	if r := a.Run("nft", "list", "ruleset"); strings.Contains(r, tap) || strings.Contains(r, uid) {
		t.Errorf("the metadata service still has rules for the deleted VM:\n%s", r)
	}
}

// netDaemonArgs are the flags of a flintlockd in a netenv host.
func netDaemonArgs() []string {
	return append([]string{"--containerd-socket", env.Containerd.Address, "--containerd-namespace", framework.ContainerdNamespace},
		framework.DefaultArgs...)
}

// TestNetworkCrashDuringInterfaces kills flintlockd (SIGKILL, from the
// hidden --crash-after-step) right after a VM's TAP is made and before its
// VMM starts, and restarts it: the VM completes on the same TAP, boots,
// gets its DHCP address and reads its instance-id from the restarted
// daemon's metadata service; no second TAP and no second VMM appear, and
// deleting the VM leaves no device.
func TestNetworkCrashDuringInterfaces(t *testing.T) {
	nenv := netenv.New(t, netenv.Options{Subnet: "10.52.0"})
	a := nenv.Hosts[0]
	a.ForwardLoopback(t, env.Registry.Host)
	d := a.StartFlintlockd(t, env.Flintlockd, "127.0.0.1:9090", "127.0.0.1:9091",
		append(netDaemonArgs(), "--metadata-service", mds.DefaultAddress.String())...)
	d.Kill()
	d.Restart(t, "--crash-after-step", "network interfaces")

	ud := `#!/bin/sh
r() { echo "RESULT $*"; }
r addr "$(ip -4 -o addr show dev eth0 | awk '{ print $4 }')"
r mds-id "$(timeout 10 wget -q -O- http://169.254.169.254/latest/meta-data/instance-id || echo unreachable)"
r done
`
	uid := createVM(t, d, "crash", &types.NetworkInterface{DeviceId: "eth0", Type: types.NetworkInterface_TAP}, ud)
	d.WaitExit(t, time.Minute)
	prefix := network.NamePrefix(uid)
	ourLinks := func() []string {
		var names []string
		for _, l := range strings.Split(a.Run("ip", "-o", "link", "show"), "\n") {
			if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], prefix) {
				names = append(names, strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
			}
		}
		return names
	}
	tap := network.DeviceName(uid, 0, false)
	if got := ourLinks(); len(got) != 1 || got[0] != tap {
		t.Fatalf("after the crash: devices %q, want the TAP %s alone", got, tap)
	}
	if pids := framework.VMMProcesses(uid); len(pids) != 0 {
		t.Fatalf("a VMM started before the crash: %v", pids)
	}
	if b, err := os.ReadFile(d.LogFile); err != nil || !strings.Contains(string(b), "--crash-after-step: killing flintlockd") {
		t.Fatalf("the daemon did not die at the crash point (%v):\n%s", err, framework.Tail(string(b), 20))
	}

	d.Restart(t)
	vm := waitCreated(t, d, uid)
	if got := vm.GetStatus().GetNetworkInterfaces()["eth0"].GetHostDeviceName(); got != tap {
		t.Errorf("status names host device %q, want %s", got, tap)
	}
	r := guestResults(d.WaitConsole(t, d.VMDir("e2e", "crash", uid), "RESULT done", 3*time.Minute))
	t.Logf("guest: %v", r)
	if !strings.HasPrefix(r["addr"], "10.52.0.1") || !strings.HasSuffix(r["addr"], "/24") {
		t.Errorf("no DHCP address: %q", r["addr"])
	}
	if r["mds-id"] != uid {
		t.Errorf("instance-id from the metadata service %q, want %s", r["mds-id"], uid)
	}
	if got := ourLinks(); len(got) != 1 || got[0] != tap {
		t.Errorf("after the restart: devices %q, want the TAP %s alone", got, tap)
	}
	if pids := framework.VMMProcesses(uid); len(pids) != 1 {
		t.Errorf("VMM processes %v, want one", pids)
	}

	ctx := context.Background()
	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; {
		if _, err := d.Client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: uid}); err != nil && strings.Contains(err.Error(), "not found") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("VM not deleted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := ourLinks(); len(got) != 0 {
		t.Errorf("devices left after delete: %q", got)
	}
	if pids := framework.VMMProcesses(uid); len(pids) != 0 {
		t.Errorf("VMM processes left after delete: %v", pids)
	}
}

// createVM creates a VM booting the test kernel and initrd with one
// interface, a generated network-config and the user-data script, and
// returns its uid.
func createVM(t *testing.T, d *netenv.Flintlockd, name string, iface *types.NetworkInterface, userData string) string {
	t.Helper()
	spec := &types.MicroVMSpec{
		Id: name, Namespace: "e2e", Vcpu: 1, MemoryInMb: 256,
		Kernel:     &types.Kernel{Image: env.Images.Kernel, AddNetworkConfig: true},
		Initrd:     &types.Initrd{Image: env.Images.Initrd},
		Interfaces: []*types.NetworkInterface{iface},
		Metadata:   map[string]string{"user-data": base64.StdEncoding.EncodeToString([]byte(userData))},
	}
	resp, err := d.Client.CreateMicroVM(context.Background(), &v1alpha1.CreateMicroVMRequest{Microvm: spec})
	if err != nil {
		t.Fatalf("%s: create %s: %v", d, name, err)
	}
	return resp.GetMicrovm().GetSpec().GetUid()
}

// waitCreated waits until the VM is CREATED (FAILED fails the test).
func waitCreated(t *testing.T, d *netenv.Flintlockd, uid string) *types.MicroVM {
	t.Helper()
	var vm *types.MicroVM
	for deadline := time.Now().Add(2 * time.Minute); ; {
		g, err := d.Client.GetMicroVM(context.Background(), &v1alpha1.GetMicroVMRequest{Uid: uid})
		if err == nil {
			vm = g.GetMicrovm()
			switch vm.GetStatus().GetState() {
			case types.MicroVMStatus_CREATED:
				return vm
			case types.MicroVMStatus_FAILED:
				t.Fatalf("%s: VM %s failed: %s", d, uid, vm.GetStatus().GetFailureMessage())
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: VM %s not created: %v", d, uid, vm.GetStatus())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// guestResults reads the "RESULT <key> <value>" lines a guest printed.
func guestResults(log string) map[string]string {
	r := map[string]string{}
	for _, l := range strings.Split(log, "\n") {
		if rest, ok := strings.CutPrefix(l, "RESULT "); ok {
			k, v, _ := strings.Cut(rest, " ")
			r[k] = strings.TrimSpace(v)
		}
	}
	return r
}
