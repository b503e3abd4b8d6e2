package placement

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

var (
	hostA = Host{Endpoint: "192.0.2.1:9090", ControlPlaneAllowed: true}
	hostB = Host{Endpoint: "192.0.2.2:9090", ControlPlaneAllowed: false}
	hostC = Host{Endpoint: "192.0.2.3:9090", ControlPlaneAllowed: true}
)

func TestStaticHonoursControlPlaneAllowed(t *testing.T) {
	hosts := []Host{hostA, hostB, hostC}
	for i := range 50 {
		got, err := Static(hosts, Request{Machine: fmt.Sprintf("cp-%d", i), ControlPlane: true})
		if err != nil {
			t.Fatal(err)
		}
		if got == hostB.Endpoint {
			t.Fatalf("control-plane machine cp-%d placed on %s, which does not allow the control plane", i, got)
		}
	}
	// Workers may use every host: over many names each host gets some.
	seen := map[string]int{}
	for i := range 60 {
		got, err := Static(hosts, Request{Machine: fmt.Sprintf("worker-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	for _, h := range hosts {
		if seen[h.Endpoint] == 0 {
			t.Errorf("no worker landed on %s: %v", h.Endpoint, seen)
		}
	}
}

func TestNoEligibleHost(t *testing.T) {
	cases := []struct {
		name  string
		hosts []Host
		req   Request
		want  string
	}{
		{"no host allows the control plane", []Host{hostB}, Request{Machine: "cp-0", ControlPlane: true}, "no host allows control-plane"},
		{"no hosts", nil, Request{Machine: "w"}, "no hosts"},
		{"failure domain not a host", []Host{hostA}, Request{Machine: "w", FailureDomain: "198.51.100.1:9090"}, "not a host"},
		{"failure domain disallows the control plane", []Host{hostA, hostB},
			Request{Machine: "cp-0", ControlPlane: true, FailureDomain: hostB.Endpoint}, "does not allow control-plane"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for name, place := range map[string]func() (string, error){
				"static":  func() (string, error) { return Static(tc.hosts, tc.req) },
				"dynamic": func() (string, error) { return Dynamic(context.Background(), tc.hosts, tc.req, roomy{}) },
			} {
				got, err := place()
				if err == nil {
					t.Fatalf("%s: placed on %s", name, got)
				}
				if !errors.Is(err, ErrNoHost) || !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("%s: error %v, want ErrNoHost (failed precondition) mentioning %q", name, err, tc.want)
				}
			}
		})
	}
}

func TestFailureDomainIsHonoured(t *testing.T) {
	hosts := []Host{hostA, hostB, hostC}
	for i := range 20 {
		got, err := Static(hosts, Request{Machine: fmt.Sprintf("w-%d", i), FailureDomain: hostB.Endpoint,
			Peers: []string{hostB.Endpoint, hostB.Endpoint}})
		if err != nil || got != hostB.Endpoint {
			t.Fatalf("got %q, %v; want the failure domain %s", got, err, hostB.Endpoint)
		}
	}
	got, err := Static(hosts, Request{Machine: "cp", ControlPlane: true, FailureDomain: hostC.Endpoint})
	if err != nil || got != hostC.Endpoint {
		t.Fatalf("control plane in its allowed failure domain: got %q, %v", got, err)
	}
}

// place puts n machines of one group on hosts one after the other, as the
// controller does, and returns the machine count per host.
func place(t *testing.T, hosts []Host, n int, prefix string) (map[string]int, []string) {
	t.Helper()
	var peers, order []string
	for i := range n {
		got, err := Static(hosts, Request{Machine: fmt.Sprintf("%s-%d", prefix, i), Peers: slices.Clone(peers)})
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, got)
		order = append(order, got)
	}
	counts := map[string]int{}
	for _, p := range peers {
		counts[p]++
	}
	return counts, order
}

func TestStaticSpreadsAGroupEvenlyAndDeterministically(t *testing.T) {
	hosts := []Host{hostA, hostB, hostC}
	counts, order := place(t, hosts, 10, "md-0")
	for _, h := range hosts {
		if c := counts[h.Endpoint]; c < 3 || c > 4 {
			t.Fatalf("uneven spread of 10 machines over 3 hosts: %v", counts)
		}
	}
	// The same machines, with the host list in another order, land on the
	// same hosts.
	_, again := place(t, []Host{hostC, hostA, hostB}, 10, "md-0")
	if !slices.Equal(order, again) {
		t.Fatalf("placement depends on the host order:\n%v\n%v", order, again)
	}
	// Another group starts its own spread: its first machine goes by hash,
	// not by the first group's counts.
	counts2, _ := place(t, hosts, 3, "md-1")
	for _, h := range hosts {
		if counts2[h.Endpoint] != 1 {
			t.Fatalf("3 machines of a new group over 3 hosts: %v", counts2)
		}
	}
}

// capacities is a CapacityReader with fixed answers per host.
type capacities map[string]Capacity

func (c capacities) Capacity(_ context.Context, host string) (Capacity, error) {
	cp, ok := c[host]
	if !ok {
		return Capacity{}, fmt.Errorf("host %s: %w", host, errdefs.ErrUnavailable)
	}
	return cp, nil
}

// roomy says every host is empty.
type roomy struct{}

func (roomy) Capacity(context.Context, string) (Capacity, error) {
	return Capacity{FreeVCPU: 64, FreeMemoryMiB: 1 << 20}, nil
}

func TestDynamic(t *testing.T) {
	ctx := context.Background()
	hosts := []Host{hostA, hostB, hostC}
	caps := capacities{
		hostA.Endpoint: {FreeVCPU: 8, FreeMemoryMiB: 8192},
		hostB.Endpoint: {FreeVCPU: 16, FreeMemoryMiB: 32768},
		hostC.Endpoint: {FreeVCPU: 4, FreeMemoryMiB: 4096},
	}
	req := Request{Machine: "w-0", VCPU: 2, MemoryMiB: 2048}

	if got, err := Dynamic(ctx, hosts, req, caps); err != nil || got != hostB.Endpoint {
		t.Fatalf("worker: got %q, %v; want the roomiest host %s", got, err, hostB.Endpoint)
	}
	cp := req
	cp.ControlPlane = true
	if got, err := Dynamic(ctx, hosts, cp, caps); err != nil || got != hostA.Endpoint {
		t.Fatalf("control plane: got %q, %v; want %s (the roomiest host that allows it)", got, err, hostA.Endpoint)
	}

	// Machines placed on B but not yet reported by it use up its room.
	busy := req
	busy.Pending = []Reservation{{Host: hostB.Endpoint, VCPU: 8, MemoryMiB: 30000}}
	if got, err := Dynamic(ctx, hosts, busy, caps); err != nil || got != hostA.Endpoint {
		t.Fatalf("with reservations on B: got %q, %v; want %s", got, err, hostA.Endpoint)
	}

	// A host that cannot be asked is skipped.
	down := capacities{hostA.Endpoint: caps[hostA.Endpoint], hostC.Endpoint: caps[hostC.Endpoint]}
	if got, err := Dynamic(ctx, hosts, req, down); err != nil || got != hostA.Endpoint {
		t.Fatalf("B unreachable: got %q, %v; want %s", got, err, hostA.Endpoint)
	}

	// Nothing fits: the error names each host's problem.
	huge := Request{Machine: "big", VCPU: 32, MemoryMiB: 65536}
	_, err := Dynamic(ctx, hosts, huge, down)
	if !errors.Is(err, ErrNoHost) {
		t.Fatalf("err = %v, want ErrNoHost", err)
	}
	for _, want := range []string{hostA.Endpoint + ": 8 vCPU and 8192 MiB free", hostB.Endpoint + ": host", "unavailable"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	// Equal capacity: the peers decide, then the hash.
	even := capacities{hostA.Endpoint: {FreeVCPU: 8, FreeMemoryMiB: 8192}, hostC.Endpoint: {FreeVCPU: 8, FreeMemoryMiB: 8192}}
	two := []Host{hostA, hostC}
	spread := req
	spread.Peers = []string{hostA.Endpoint}
	if got, err := Dynamic(ctx, two, spread, even); err != nil || got != hostC.Endpoint {
		t.Fatalf("equal capacity, a peer on A: got %q, %v; want %s", got, err, hostC.Endpoint)
	}
}

// TestStaticConcurrentReconcilesAgree: machines of one group placed at the
// same time each see the others unplaced; every one of them must compute
// the same even spread, so no two land together while a host is empty.
func TestStaticConcurrentReconcilesAgree(t *testing.T) {
	hosts := []Host{{Endpoint: "a:9090"}, {Endpoint: "b:9090"}, {Endpoint: "c:9090"}}
	for _, n := range []int{2, 3, 6, 7} {
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("md-0-%05x", i*7919)
		}
		got := map[string]int{}
		for _, m := range names {
			others := slices.DeleteFunc(slices.Clone(names), func(s string) bool { return s == m })
			h, err := Static(hosts, Request{Machine: m, Unplaced: others})
			if err != nil {
				t.Fatal(err)
			}
			got[h]++
		}
		lo, hi := n, 0
		for _, h := range hosts {
			lo, hi = min(lo, got[h.Endpoint]), max(hi, got[h.Endpoint])
		}
		if hi-lo > 1 {
			t.Errorf("%d machines placed at once: uneven spread %v", n, got)
		}
	}
}
