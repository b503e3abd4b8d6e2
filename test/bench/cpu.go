package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// clockTick is USER_HZ, the unit of /proc CPU times (100 on Linux/x86).
const clockTick = 10 // ms

// cpuSnap is the CPU time used so far by the processes of a measurement,
// in clock ticks.
type cpuSnap struct {
	machine    int64 // busy time of every CPU (/proc/stat)
	daemon     int64
	containerd int64
	self       int64         // the bench program
	vmm        map[int]int64 // by pid
}

// cpuUse is the CPU time spent between two snapshots, in milliseconds.
type cpuUse struct {
	machine, daemon, containerd, self, vmm float64
}

// other is the CPU time of everything else on the machine (other users,
// kernel threads).
func (u cpuUse) other() float64 {
	return max(u.machine-u.daemon-u.containerd-u.self-u.vmm, 0)
}

// per divides every figure by n.
func (u cpuUse) per(n int) cpuUse {
	f := float64(max(n, 1))
	return cpuUse{u.machine / f, u.daemon / f, u.containerd / f, u.self / f, u.vmm / f}
}

func (b *bench) cpuSnapshot(d *framework.Daemon) cpuSnap {
	s := cpuSnap{vmm: map[int]int64{}}
	s.machine = machineBusy()
	s.daemon = procCPU(d.Pid())
	s.self = procCPU(os.Getpid())
	for _, pid := range framework.VMMProcesses(filepath.Join(b.env.Containerd.Dir, "config.toml")) {
		s.containerd += procCPU(pid)
	}
	for _, pid := range framework.VMMProcesses(d.StateDir) {
		if pid != d.Pid() {
			s.vmm[pid] = procCPU(pid)
		}
	}
	return s
}

// since is the CPU spent from before to s; VMMs started meanwhile count
// from zero, VMMs gone meanwhile are not counted.
func (s cpuSnap) since(before cpuSnap) cpuUse {
	u := cpuUse{
		machine:    float64(s.machine - before.machine),
		daemon:     float64(s.daemon - before.daemon),
		containerd: float64(s.containerd - before.containerd),
		self:       float64(s.self - before.self),
	}
	for pid, t := range s.vmm {
		u.vmm += float64(t - before.vmm[pid])
	}
	u.machine *= clockTick
	u.daemon *= clockTick
	u.containerd *= clockTick
	u.self *= clockTick
	u.vmm *= clockTick
	return u
}

// procCPU is the user+system time of pid, 0 when it is gone.
func procCPU(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// machineBusy is the non-idle time of all CPUs from /proc/stat.
func machineBusy() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy int64
	// cpu user nice system idle iowait irq softirq steal ...
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		if i < len(f) {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			busy += v
		}
	}
	return busy
}

// cpuRow is the CPU spent per VM by one case.
type cpuRow struct {
	name string
	vms  int
	use  cpuUse // per VM
}

// addCPU records the CPU spent since before on vms VMs. The VMMs of a
// delete are gone by the end: their share is not counted.
func (b *bench) addCPU(name string, vms int, before cpuSnap, d *framework.Daemon) {
	b.cpu = append(b.cpu, cpuRow{name: name, vms: vms, use: b.cpuSnapshot(d).since(before).per(vms)})
}

// scanTime is the cost of one scan of /proc reading every process's
// command line, as the QEMU provider's process.Find does.
type scanTime struct {
	vmms, procs int
	took        time.Duration
}

// scanProc times a /proc scan (the median of five).
func (b *bench) scanProc(d *framework.Daemon) scanTime {
	st := scanTime{vmms: len(framework.VMMProcesses(d.StateDir)) - 1}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			st.procs++
		}
	}
	var ts []time.Duration
	for range 5 {
		t0 := time.Now()
		framework.VMMProcesses("\x00no-such-argument\x00")
		ts = append(ts, time.Since(t0))
	}
	st.took = pct(ts, 0.5)
	return st
}

// idleCPU is the CPU used while nothing is asked of the daemon, in percent
// of one CPU.
type idleCPU struct {
	vmms              int
	daemon, vmm, host float64
}

// measureIdle samples the CPU use of the daemon and its VMMs over a second.
func (b *bench) measureIdle(ctx context.Context, d *framework.Daemon) error {
	c0 := b.cpuSnapshot(d)
	t0 := time.Now()
	if err := sleepCtx(ctx, time.Second); err != nil {
		return err
	}
	u := b.cpuSnapshot(d).since(c0)
	el := float64(time.Since(t0).Milliseconds())
	b.idle = append(b.idle, idleCPU{vmms: len(c0.vmm), daemon: 100 * u.daemon / el, vmm: 100 * u.vmm / el, host: 100 * u.machine / el})
	return nil
}
