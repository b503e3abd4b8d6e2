package framework

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// VMMProcesses lists the pids of live (not zombie) processes whose command
// line contains match: a VM's uid finds its VMM, a daemon's state folder
// finds every VMM of that daemon.
func VMMProcesses(match string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), match) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i+1:]), " Z") {
			continue // a zombie waiting for its reaper is not a running VMM
		}
		pids = append(pids, pid)
	}
	return pids
}

// Leftovers lists what the VM left behind: VMM processes, its folder,
// containerd leases and snapshots naming its uid, and mounts naming its uid
// or the daemon's state folder. An error means the check itself failed.
func (d *Daemon) Leftovers(ctx context.Context, vm *types.MicroVM) ([]string, error) {
	var left []string
	uid := vm.GetSpec().GetUid()
	if pids := VMMProcesses(uid); len(pids) > 0 {
		left = append(left, fmt.Sprintf("VMM processes of %s still running: %v", uid, pids))
	}
	if _, err := os.Stat(d.VMDir(vm)); !os.IsNotExist(err) {
		left = append(left, fmt.Sprintf("VM folder %s still exists (%v)", d.VMDir(vm), err))
	}
	c, err := containerd.New(d.Env.Containerd.Address, containerd.WithDefaultNamespace(ContainerdNamespace))
	if err != nil {
		return left, err
	}
	defer c.Close()
	ls, err := c.LeasesService().List(ctx)
	if err != nil {
		return left, err
	}
	for _, l := range ls {
		if strings.Contains(l.ID, uid) {
			left = append(left, fmt.Sprintf("containerd lease %s still exists", l.ID))
		}
	}
	for _, sn := range []string{"overlayfs", "native"} {
		_ = c.SnapshotService(sn).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			if strings.Contains(info.Name, uid) {
				left = append(left, fmt.Sprintf("snapshot %s/%s still exists", sn, info.Name))
			}
			return nil
		})
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return left, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), uid) || strings.Contains(sc.Text(), d.StateDir) {
			left = append(left, fmt.Sprintf("mount left behind: %s", sc.Text()))
		}
	}
	return left, sc.Err()
}

// AssertNothingLeft fails the test (without stopping it) for everything
// the VM left behind: process, file, lease, snapshot or mount.
func (d *Daemon) AssertNothingLeft(t testing.TB, vm *types.MicroVM) {
	t.Helper()
	left, err := d.Leftovers(context.Background(), vm)
	for _, l := range left {
		t.Error(l)
	}
	if err != nil {
		t.Fatal(err)
	}
}
