// Package placement owns the choice of the flintlock host a machine's
// microVM is created on. Static placement spreads the machines of one group
// (a MachineDeployment, a control plane) evenly over a fixed list of hosts,
// breaking ties with a stable hash of the machine name, so the same inputs
// always give the same host. Dynamic placement asks each host for its free
// capacity and picks the one with the most room that fits. Both honour a
// host's controlplaneAllowed for control-plane machines on every path,
// including a Machine that names its failure domain (host) itself.
//
// The package knows nothing of Kubernetes or gRPC: the caller describes the
// hosts and the machine, and reads capacity through CapacityReader.
package placement

import (
	"cmp"
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
)

// Host is a host machines may be placed on.
type Host struct {
	// Endpoint is the host's flintlockd address, host:port; it is also the
	// host's failure domain name.
	Endpoint string
	// ControlPlaneAllowed says whether control-plane machines may run there.
	ControlPlaneAllowed bool
}

// Request describes the machine to place.
type Request struct {
	// Machine is the machine's name; it breaks ties between equally good
	// hosts, stably.
	Machine string
	// ControlPlane marks a control-plane machine: only hosts that allow the
	// control plane qualify.
	ControlPlane bool
	// FailureDomain is the failure domain (host endpoint) the Machine asks
	// for, if any; it must be one of the hosts and must qualify.
	FailureDomain string
	// Peers are the hosts of the other machines of the same group that are
	// already placed, one entry per machine; placement evens them out.
	Peers []string
	// Unplaced are the other machines of the group that have no host yet.
	// Static placement places them too, in name order, and returns this
	// machine's share, so that reconciles running at once agree on one
	// even spread instead of each seeing only the placed peers.
	Unplaced []string
	// VCPU and MemoryMiB are what the microVM needs (dynamic placement).
	VCPU, MemoryMiB int64
	// Pending are machines placed on a host whose microVM the host does not
	// report yet (dynamic placement subtracts them from the host's free
	// capacity, so a burst of machines does not all land on one host).
	Pending []Reservation
}

// Reservation is capacity promised on a host.
type Reservation struct {
	Host            string
	VCPU, MemoryMiB int64
}

// Capacity is what a host has free now.
type Capacity struct {
	FreeVCPU      int64
	FreeMemoryMiB int64
	MicroVMs      int
}

// CapacityReader reads a host's free capacity (the host service's
// GetCapacity).
type CapacityReader interface {
	Capacity(ctx context.Context, host string) (Capacity, error)
}

// ErrNoHost is wrapped by every error saying that no host may take the
// machine; it is an errdefs.ErrFailedPrecondition.
var ErrNoHost = fmt.Errorf("no host can take the machine: %w", errdefs.ErrFailedPrecondition)

// Static chooses a host from hosts: the one holding the fewest peers, ties
// broken by a stable hash of the machine name and the host. The group's
// unplaced machines are placed first when their names sort before this
// one's, as every other reconcile of the group will place them.
func Static(hosts []Host, req Request) (string, error) {
	eligible, err := candidates(hosts, req)
	if err != nil {
		return "", err
	}
	if len(eligible) == 1 {
		return eligible[0].Endpoint, nil
	}
	counts := peerCounts(req.Peers)
	names := append(slices.Clone(req.Unplaced), req.Machine)
	slices.Sort(names)
	for _, name := range slices.Compact(names) {
		best := slices.MinFunc(eligible, func(a, b Host) int {
			return cmp.Or(
				cmp.Compare(counts[a.Endpoint], counts[b.Endpoint]),
				cmp.Compare(rank(name, a.Endpoint), rank(name, b.Endpoint)),
			)
		})
		if name == req.Machine {
			return best.Endpoint, nil
		}
		counts[best.Endpoint]++
	}
	panic("unreachable: req.Machine is among the names")
}

// Dynamic chooses, among the hosts whose free capacity (less the pending
// reservations) fits the machine, the one with the most free memory, then
// the most free vCPUs, then the fewest peers, then by the stable hash.
// Hosts that cannot be asked are skipped; when none fits, the error says
// why for each host.
func Dynamic(ctx context.Context, hosts []Host, req Request, reader CapacityReader) (string, error) {
	eligible, err := candidates(hosts, req)
	if err != nil {
		return "", err
	}
	type result struct {
		host Host
		free Capacity
		err  error
	}
	results := make([]result, len(eligible))
	var wg sync.WaitGroup
	for i, h := range eligible {
		wg.Go(func() {
			c, err := reader.Capacity(ctx, h.Endpoint)
			results[i] = result{host: h, free: c, err: err}
		})
	}
	wg.Wait()

	reserved := map[string]Capacity{}
	for _, r := range req.Pending {
		c := reserved[r.Host]
		c.FreeVCPU += r.VCPU
		c.FreeMemoryMiB += r.MemoryMiB
		reserved[r.Host] = c
	}
	counts := peerCounts(req.Peers)
	var fits []result
	var problems []string
	for _, r := range results {
		if r.err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", r.host.Endpoint, r.err))
			continue
		}
		res := reserved[r.host.Endpoint]
		r.free.FreeVCPU -= res.FreeVCPU
		r.free.FreeMemoryMiB -= res.FreeMemoryMiB
		if r.free.FreeVCPU < req.VCPU || r.free.FreeMemoryMiB < req.MemoryMiB {
			problems = append(problems, fmt.Sprintf("%s: %d vCPU and %d MiB free, %d and %d needed",
				r.host.Endpoint, max(r.free.FreeVCPU, 0), max(r.free.FreeMemoryMiB, 0), req.VCPU, req.MemoryMiB))
			continue
		}
		fits = append(fits, r)
	}
	if len(fits) == 0 {
		return "", fmt.Errorf("%w: %s", ErrNoHost, strings.Join(problems, "; "))
	}
	best := slices.MinFunc(fits, func(a, b result) int {
		return cmp.Or(
			cmp.Compare(b.free.FreeMemoryMiB, a.free.FreeMemoryMiB),
			cmp.Compare(b.free.FreeVCPU, a.free.FreeVCPU),
			cmp.Compare(counts[a.host.Endpoint], counts[b.host.Endpoint]),
			cmp.Compare(rank(req.Machine, a.host.Endpoint), rank(req.Machine, b.host.Endpoint)),
		)
	})
	return best.host.Endpoint, nil
}

// candidates returns the hosts the machine may go to: the Machine's own
// failure domain when it names one, else every host that allows the
// machine's role.
func candidates(hosts []Host, req Request) ([]Host, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("%w: the placement has no hosts", ErrNoHost)
	}
	allowed := func(h Host) bool { return !req.ControlPlane || h.ControlPlaneAllowed }
	if fd := req.FailureDomain; fd != "" {
		i := slices.IndexFunc(hosts, func(h Host) bool { return h.Endpoint == fd })
		switch {
		case i < 0:
			return nil, fmt.Errorf("%w: failure domain %q is not a host of the placement", ErrNoHost, fd)
		case !allowed(hosts[i]):
			return nil, fmt.Errorf("%w: failure domain %q does not allow control-plane machines", ErrNoHost, fd)
		}
		return hosts[i : i+1], nil
	}
	var out []Host
	for _, h := range hosts {
		if allowed(h) {
			out = append(out, h)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no host allows control-plane machines", ErrNoHost)
	}
	return out, nil
}

func peerCounts(peers []string) map[string]int {
	counts := make(map[string]int, len(peers))
	for _, p := range peers {
		counts[p]++
	}
	return counts
}

// rank is the stable tie-break: a hash of the machine and the host
// (rendezvous hashing), so a machine's preference among equal hosts never
// depends on the order of the host list.
func rank(machine, host string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(machine))
	h.Write([]byte{0})
	h.Write([]byte(host))
	return h.Sum64()
}
