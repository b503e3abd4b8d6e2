package netenv

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/hostnet"
	"github.com/liquidmetal-go/liquidmetal/internal/mds"
	"github.com/liquidmetal-go/liquidmetal/internal/network"
)

// Ports of host A: 9090 stands for flintlockd's API and is a management
// port closed to VMs; 9099 is an open port, to show the guest can reach
// the host at all.
const (
	mgmtPort    = 9090
	controlPort = 9099
)

// results reads the "RESULT <key> <value>" lines a guest printed.
func results(log string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(log, "\n") {
		if rest, ok := strings.CutPrefix(l, "RESULT "); ok {
			k, v, _ := strings.Cut(rest, " ")
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// guestLib is the start of every test guest's user-data.
const guestLib = `#!/bin/sh
r() { echo "RESULT $*"; }
# retry N CMD...: CMD until it succeeds, at most N times.
retry() { n=$1; shift; i=0; until "$@"; do i=$((i + 1)); [ "$i" -ge "$n" ] && return 1; done; }
`

// TestTwoHosts boots a DHCP guest on host A and a static guest on host B
// and checks from inside them: the DHCP lease and the bridge address, the
// static address, the two guests reaching each other across the VLAN, NAT
// to the internet, the closed management port, and the metadata service
// (own data, nothing of another VM however asked). Then apply runs again
// on the live hosts (no change) and a bad config changes nothing; at the
// end every host network is torn down back to the namespace it found.
func TestTwoHosts(t *testing.T) {
	env := New(t, Options{Subnet: "10.50.0", ManagementPorts: []int{mgmtPort}})
	a, b := env.Hosts[0], env.Hosts[1]
	for port, text := range map[int]string{mgmtPort: "FLINTLOCKD-API", controlPort: "CONTROL-OK"} {
		a.Serve(":"+strconv.Itoa(port), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintln(w, text)
		}))
	}

	// Host A's metadata service, with a victim VM registered whose TAP
	// has no guest: its data must stay out of reach.
	a.StartMDS(mds.Options{})
	victimUID := "victim-" + randomHex(4)
	victimSecret := "VICTIM-SECRET-" + randomHex(8)
	mgr := network.New(network.Options{DefaultBridge: Bridge})
	var vdev network.Device
	var err error
	a.Do(func() {
		vdev, err = mgr.Ensure(t.Context(), victimUID, 0, &types.NetworkInterface{DeviceId: "eth0", Type: types.NetworkInterface_TAP})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Do(func() { _ = mgr.Remove(context.Background(), victimUID, 1) }) })
	if err := a.MDS.Register(victimUID, []string{vdev.Name}, map[string][]byte{
		"meta-data": []byte("instance-id: " + victimUID + "\n"),
		"user-data": []byte("#cloud-config\n# " + victimSecret + "\n"),
	}); err != nil {
		t.Fatal(err)
	}
	victimPort := a.MDS.Port(victimUID)

	vm1UID, vm2UID := "vm1-"+randomHex(4), "vm2-"+randomHex(4)
	gw := "10.50.0.2"
	vm2 := b.Boot(t, GuestSpec{UID: vm2UID, Name: "vm2", Address: &types.StaticAddress{Address: "10.50.0.60/24", Gateway: &gw},
		UserData: guestLib + `
r addr "$(ip -4 -o addr show dev eth0 | awk '{ print $4 }')"
r gw "$(ip route | awk '$1 == "default" { print $3 }')"
retry 5 ping -c 1 -W 1 10.50.0.2 >/dev/null && r ping-own-host ok || r ping-own-host failed
retry 20 ping -c 1 -W 1 10.50.0.1 >/dev/null && r ping-host-a ok || r ping-host-a failed
r done
`})
	md := "http://" + mds.Address
	vm1 := a.Boot(t, GuestSpec{UID: vm1UID, Name: "vm1", Metadata: true, UserData: guestLib + fmt.Sprintf(`
r addr "$(ip -4 -o addr show dev eth0 | awk '{ print $4 }')"
r gw "$(ip route | awk '$1 == "default" { print $3 }')"
retry 5 ping -c 1 -W 1 10.50.0.1 >/dev/null && r ping-bridge ok || r ping-bridge failed
# vm2 boots on host B at the same time.
retry 60 ping -c 1 -W 1 10.50.0.60 >/dev/null && r ping-vm2 ok || r ping-vm2 failed
r internet "$(timeout 10 wget -q -O- http://%[1]s/ || echo unreachable)"
r mgmt "$(timeout 3 wget -q -O- http://10.50.0.1:%[2]d/ || echo unreachable)"
r control "$(timeout 3 wget -q -O- http://10.50.0.1:%[3]d/ || echo unreachable)"
r md-instance-id "$(timeout 5 wget -q -O- %[4]s/latest/meta-data/instance-id)"
r md-hostname "$(timeout 5 wget -q -O- %[4]s/latest/meta-data/local-hostname)"
r md-user-data "$(timeout 5 wget -q -O- %[4]s/latest/user-data | head -n 1)"
tok=$(printf 'PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n' | timeout 5 nc %[5]s 80 | tail -n 1)
r md-token-bytes "${#tok}"
r md-with-token "$(timeout 5 wget -q -O- --header "X-metadata-token: $tok" %[4]s/latest/meta-data/instance-id)"
r md-bad-token "$(timeout 5 wget -q -O- --header "X-metadata-token: x$tok" %[4]s/latest/meta-data/instance-id || echo refused)"
r claim-id "$(timeout 5 wget -q -O- --header 'X-Instance-Id: %[6]s' '%[4]s/latest/meta-data/instance-id?instance-id=%[6]s')"
r claim-user-data "$(timeout 5 wget -q -O- --header 'X-Instance-Id: %[6]s' '%[4]s/latest/user-data?uid=%[6]s' | tr '\n' ' ')"
r claim-nocloud "$(timeout 5 wget -q -O- '%[4]s/nocloud/meta-data?instance-id=%[6]s' | tr '\n' ' ')"
r direct "$(timeout 3 wget -q -O- http://10.50.0.1:%[7]d/latest/user-data || echo unreachable)"
r done
`, env.Internet.Addr, mgmtPort, controlPort, md, mds.Address, victimUID, victimPort)})

	log1 := vm1.Wait(t, "RESULT done", 150*time.Second)
	log2 := vm2.Wait(t, "RESULT done", 60*time.Second)
	r1, r2 := results(log1), results(log2)
	t.Logf("vm1: %v", r1)
	t.Logf("vm2: %v", r2)

	// vm1: DHCP from host A's dnsmasq, in the dynamic range, router = A.
	m := regexp.MustCompile(`^10\.50\.0\.(\d+)/24$`).FindStringSubmatch(r1["addr"])
	if m == nil {
		t.Errorf("vm1 address %q is not a DHCP lease in 10.50.0.0/24", r1["addr"])
	} else if n, _ := strconv.Atoi(m[1]); n < 100 || n > 150 {
		t.Errorf("vm1 leased %s, outside the range .100-.150", r1["addr"])
	}
	if !strings.Contains(log1, "LIQUIDMETAL-GUEST: dhcp eth0 bound "+r1["addr"]+" router 10.50.0.1") {
		t.Errorf("vm1's console shows no DHCP lease of %s", r1["addr"])
	}
	expect := func(vm string, r map[string]string, key, want string) {
		t.Helper()
		if r[key] != want {
			t.Errorf("%s %s = %q, want %q", vm, key, r[key], want)
		}
	}
	expect("vm1", r1, "gw", "10.50.0.1")
	expect("vm1", r1, "ping-bridge", "ok")
	// vm2: the static address and gateway of its network-config.
	expect("vm2", r2, "addr", "10.50.0.60/24")
	expect("vm2", r2, "gw", "10.50.0.2")
	expect("vm2", r2, "ping-own-host", "ok")
	// Across the VLAN, both ways.
	expect("vm1", r1, "ping-vm2", "ok")
	expect("vm2", r2, "ping-host-a", "ok")
	// NAT: the internet sees host A's wan address.
	expect("vm1", r1, "internet", "INTERNET "+env.Internet.Token+" from 198.51.100.2")
	// The management port is closed to the VM; another port of the same
	// host answers.
	expect("vm1", r1, "mgmt", "unreachable")
	expect("vm1", r1, "control", "CONTROL-OK")

	// Metadata: its own.
	expect("vm1", r1, "md-instance-id", vm1UID)
	expect("vm1", r1, "md-hostname", "vm1")
	expect("vm1", r1, "md-user-data", "#!/bin/sh")
	expect("vm1", r1, "md-with-token", vm1UID)
	expect("vm1", r1, "md-bad-token", "refused")
	if n, _ := strconv.Atoi(r1["md-token-bytes"]); n < 20 {
		t.Errorf("vm1 got no token: %q", r1["md-token-bytes"])
	}
	// Claiming to be the victim gets vm1's own data; the victim's listener
	// cannot be reached by port; its secret never reaches the guest.
	expect("vm1", r1, "claim-id", vm1UID)
	if !strings.HasPrefix(r1["claim-user-data"], "#!/bin/sh") {
		t.Errorf("vm1 claim-user-data = %q, want its own user-data", r1["claim-user-data"])
	}
	if !strings.Contains(r1["claim-nocloud"], "instance-id: "+vm1UID) {
		t.Errorf("vm1 claim-nocloud = %q", r1["claim-nocloud"])
	}
	expect("vm1", r1, "direct", "unreachable")
	if strings.Contains(log1, victimSecret) || strings.Contains(log1, "instance-id: "+victimUID) {
		t.Errorf("the victim's data reached vm1")
	}

	// Apply again on the live hosts (TAPs on the bridges, the metadata
	// service's tables): nothing to do, nothing changes.
	for _, h := range env.Hosts {
		before := h.Snapshot()
		res, err := h.Apply(hostnet.Options{})
		if err != nil {
			t.Errorf("[%s] second apply: %v", h.Name, err)
			continue
		}
		if len(res.Steps) != 0 {
			t.Errorf("[%s] second apply made steps: %v", h.Name, res.Steps)
		}
		if got := h.Snapshot(); got != before {
			t.Errorf("[%s] second apply changed the namespace:\n%s", h.Name, Diff(before, got))
		}
	}

	// A bad config (host B: a missing parent, and a VIP range inside the
	// DHCP range) is refused with nothing changed.
	before := b.Snapshot()
	bad := *b.Config
	bad.StateDir = t.TempDir() + "/bad"
	bad.ParentInterface = "eth9"
	if _, err := (&Host{NS: b.NS, Config: &bad}).Apply(hostnet.Options{}); !errdefs.IsFailedPrecondition(err) ||
		!strings.Contains(err.Error(), `parentInterface: "eth9" not found`) {
		t.Errorf("missing parent: %v", err)
	}
	if _, err := hostnet.ParseConfig([]byte("bridge: lmbr9\naddress: 10.60.0.1/24\ndhcp: {range: 10.60.0.100-10.60.0.150}\nvipRange: 10.60.0.140-10.60.0.145\n")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("VIP range inside the DHCP range: %v", err)
	}
	if got := b.Snapshot(); got != before {
		t.Errorf("a refused apply changed the namespace:\n%s", Diff(before, got))
	}
}
