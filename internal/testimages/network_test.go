package testimages

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/metadata"
)

// TestGuestNetworkConfig boots the guest with two NICs on QEMU's user-mode
// network (its built-in DHCP server, and 10.0.x.2 forwarding to the host's
// loopback) and a network-config made by internal/metadata: the first NIC
// by DHCP, the second with a static address and name server. The guest's
// user-data then fetches a per-run token from a host listener through each
// NIC and prints its addresses and resolv.conf.
func TestGuestNetworkConfig(t *testing.T) {
	a := artifacts(t)

	token := randomHex(t, 8)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s%s", token, r.URL.Path)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	port := lis.Addr().(*net.TCPAddr).Port

	const (
		mac0 = "02:00:00:11:22:01"
		mac1 = "02:00:00:11:22:02"
	)
	nc, err := metadata.NetworkConfigFor([]*types.NetworkInterface{
		{DeviceId: "eth0", GuestMac: ptr(mac0)},
		{DeviceId: "eth1", GuestMac: ptr(mac1), Address: &types.StaticAddress{
			Address: "10.0.3.50/24", Gateway: ptr("10.0.3.2"), Nameservers: []string{"192.0.2.53"},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// busybox 1.35's wget -T crashes in this guest: timeout(1) bounds it.
	ud := fmt.Sprintf(`#!/bin/sh
echo "NETTEST addrs $(ip -4 -o addr show | awk '$2 != "lo" { print $2 "=" $4 }' | sort | tr '\n' ' ')"
echo "NETTEST via-eth0 $(timeout 10 wget -q -O- http://10.0.2.2:%[1]d/eth0)"
echo "NETTEST via-eth1 $(timeout 10 wget -q -O- http://10.0.3.2:%[1]d/eth1)"
echo "NETTEST route-to-eth1 $(ip route get 10.0.3.2 | head -n 1)"
echo "NETTEST defaults $(ip route | awk '$1 == "default" { print $3 "/" $5 "/" ($7 == "" ? 0 : $7) }' | tr '\n' ' ')"
echo "NETTEST resolv $(grep '^nameserver' /etc/resolv.conf | tr '\n' ' ')"
`, port)
	docs := map[string]string{
		"meta-data":      "instance-id: i-net\nlocal-hostname: nettest\n",
		"user-data":      ud,
		"network-config": string(nc),
	}
	cidata := filepath.Join(t.TempDir(), "cidata.iso")
	isoCidata(t, cidata, docs)
	nics := []string{
		"-netdev", "user,id=n0,net=10.0.2.0/24",
		"-device", "virtio-net-device,netdev=n0,mac=" + mac0,
		"-netdev", "user,id=n1,net=10.0.3.0/24",
		"-device", "virtio-net-device,netdev=n1,mac=" + mac1,
	}
	console := bootQEMUWith(t, a.Vmlinuz, a.Initrd, "", nics, qemuDisk{path: cidata, readOnly: true})
	log := waitConsole(t, console, 90*time.Second, "LIQUIDMETAL-GUEST: user-data exited")

	want := []string{
		"LIQUIDMETAL-GUEST: net eth0 " + mac0 + " dhcp4\n",
		"LIQUIDMETAL-GUEST: net eth1 " + mac1 + " static 10.0.3.50/24\n",
		// QEMU's DHCP server hands out .15 of its network.
		"LIQUIDMETAL-GUEST: dhcp eth0 bound 10.0.2.15/24 router 10.0.2.2\n",
		"LIQUIDMETAL-GUEST: network configured\n",
		"NETTEST addrs eth0=10.0.2.15/24 eth1=10.0.3.50/24 \n",
		"NETTEST via-eth0 " + token + "/eth0\n",
		"NETTEST via-eth1 " + token + "/eth1\n",
		"NETTEST route-to-eth1 10.0.3.2 dev eth1",
		// Both default routes: the static one is preferred.
		"NETTEST defaults 10.0.3.2/eth1/0 10.0.2.2/eth0/1024 \n",
		// The static name server, then the one DHCP gave.
		"NETTEST resolv nameserver 192.0.2.53 nameserver 10.0.2.3 \n",
		"LIQUIDMETAL-GUEST: user-data exited 0",
	}
	for _, w := range want {
		if !strings.Contains(log, w) {
			t.Errorf("console has no %q", w)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", log)
	}
}

func ptr[T any](v T) *T { return &v }
