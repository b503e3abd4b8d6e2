// Command bench measures flintlockd end to end on this host and prints the
// figures as tables next to the project's targets and upstream flintlock's
// baseline: create→running latency and throughput, delete latency, List
// latency, the daemon's memory, and a summary of the Go micro-benchmarks.
//
// It runs flintlockd as a separate process (started with --start-paused,
// so QEMU starts with the guest's CPUs stopped and the guest's own boot is
// not measured) against a private containerd and a loopback registry set
// up by test/framework. Every VM and process it started is removed at the
// end, also after Ctrl-C. hack/bench.sh builds and runs it (make bench).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// Targets of the project and upstream flintlockd's figures on this kind
// of machine.
const (
	targetCreateP50 = 200 * time.Millisecond
	targetList1000  = 20 * time.Millisecond
	targetRSSKB     = 64 << 10
	upstreamRateLo  = 7.0 // creates/s at 100 concurrent
	upstreamRateHi  = 8.0
	upstreamList100 = 90 * time.Millisecond
	aimFactor       = 10.0 // we aim for 10× upstream
)

type options struct {
	flintlockd, fl, dir string
	seq, conc, rounds   int
	burst, rssVMs       int
	records, listCalls  int
	memMB, workers      int
	poll, burstPoll     time.Duration
	micro               bool
	benchtime           string
}

// runningDaemon is a daemon the bench started; withVMs says whether
// cleanup must delete its VMs through the API before stopping it.
type runningDaemon struct {
	*framework.Daemon
	withVMs bool
}

type bench struct {
	o       options
	env     *framework.Env
	daemons []*runningDaemon
	started time.Time
	out     io.Writer // the report
	log     io.Writer // progress

	host  []string
	notes []string // how the run went (scaling, anomalies)
	vmmKB int64    // mean RSS of a paused VMM, once measured

	firstPull       sample
	seq, burst, rss series
	concBatches     []series
	delSeq, delAll  series
	delBatches      []series
	template        *types.MicroVM // a real CREATED record, copied for the List figure
	list100         []time.Duration
	list1000        []time.Duration
	listNS          []time.Duration
	listNSCount     int
	listBytes       int           // size of a List response of every record
	listDecode      time.Duration // the client's time to decode it
	recordBytes     int
	mem             []memory
	cpu             []cpuRow
	idle            []idleCPU
	scans           []scanTime
	micro           []microResult
	capmvm          *capmvmResult // see capmvm.go
	volumes         []volumeRow   // see volumes.go
}

func main() {
	var o options
	flag.StringVar(&o.flintlockd, "flintlockd", "", "flintlockd binary (built when empty, with -fl)")
	flag.StringVar(&o.fl, "fl", "", "fl binary")
	flag.StringVar(&o.dir, "dir", "", "scratch folder, short (default: a new temporary folder, removed at the end)")
	flag.IntVar(&o.seq, "seq", 50, "VMs created one at a time")
	flag.IntVar(&o.conc, "conc", 20, "VMs per concurrent batch")
	flag.IntVar(&o.rounds, "rounds", 5, "concurrent batches")
	flag.IntVar(&o.burst, "burst", 100, "VMs created at once for the throughput figure")
	flag.IntVar(&o.rssVMs, "rss-vms", 200, "VMs running when the daemon's RSS is read")
	flag.IntVar(&o.records, "records", 1000, "stored records for the List figure")
	flag.IntVar(&o.listCalls, "list-calls", 100, "List calls per List figure")
	flag.IntVar(&o.memMB, "memory", 128, "guest memory of each VM (MiB)")
	flag.IntVar(&o.workers, "workers", 0, "flintlockd --workers (0: its default)")
	flag.DurationVar(&o.poll, "poll", 2*time.Millisecond, "poll period for single VMs and batches of up to 20")
	flag.DurationVar(&o.burstPoll, "burst-poll", 20*time.Millisecond, "poll period for larger batches")
	flag.BoolVar(&o.micro, "micro", true, "run the Go micro-benchmarks")
	flag.StringVar(&o.benchtime, "benchtime", "200ms", "-benchtime of the Go micro-benchmarks")
	flag.Parse()

	// Set-up libraries log with slog; only their warnings are of interest.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if os.Geteuid() != 0 && !*capmvmOnly {
		fmt.Fprintln(os.Stderr, "bench: run as root (containerd, mounts, QEMU)")
		os.Exit(1)
	}
	removeDir := false
	if o.dir == "" {
		d, err := os.MkdirTemp("", "lm-bench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		o.dir, removeDir = d, true
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C ends the program at once
	}()
	b := &bench{o: o, out: os.Stdout, log: os.Stderr, started: time.Now()}
	err := b.run(ctx)
	interrupted := ctx.Err() != nil // only a signal cancels ctx before stop
	stop()
	if interrupted {
		fmt.Fprintln(os.Stderr, "\ninterrupted: removing every VM and process of the run")
	}
	if err != nil && !interrupted {
		fmt.Fprintf(os.Stderr, "\nbench stopped: %v\n", err)
		for _, d := range b.daemons {
			if d.Pid() != 0 {
				fmt.Fprintf(os.Stderr, "flintlockd log (%s, tail):\n%s\n", d.StateDir, d.LogTail(30))
			}
		}
	}
	if !interrupted {
		b.report()
	}
	cerr := b.cleanup()
	if cerr != nil {
		fmt.Fprintf(os.Stderr, "cleanup: %v\n", cerr)
	}
	if removeDir && cerr == nil {
		_ = os.RemoveAll(o.dir)
	}
	if err != nil || cerr != nil {
		os.Exit(1)
	}
}

// step prints progress.
func (b *bench) step(format string, args ...any) {
	fmt.Fprintf(b.log, "[%5.1fs] %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) startDaemon(ctx context.Context, name string, withVMs bool, extra ...string) (*framework.Daemon, error) {
	args := []string{"--log-level", "info"}
	if b.o.workers > 0 {
		args = append(args, "--workers", fmt.Sprint(b.o.workers))
	}
	d, err := framework.NewDaemon(b.env, filepath.Join(b.o.dir, name), append(args, extra...)...)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.StateDir, 0o750); err != nil {
		return nil, err
	}
	if err := d.Start(ctx); err != nil {
		return nil, err
	}
	b.daemons = append(b.daemons, &runningDaemon{Daemon: d, withVMs: withVMs})
	return d, nil
}

func (b *bench) run(ctx context.Context) error {
	b.hostInfo()
	if *capmvmOnly {
		return b.capmvmPhase(ctx)
	}
	b.step("set-up: containerd, loopback registry, test images")
	env, err := framework.Setup(ctx, framework.Options{Dir: b.o.dir, Flintlockd: b.o.flintlockd, FL: b.o.fl})
	if err != nil {
		return err
	}
	b.env = env
	if *volumesOnly {
		return b.volumesPhase(ctx)
	}
	if err := b.vmPhases(ctx); err != nil {
		return err
	}
	if err := b.listPhase(ctx); err != nil {
		return err
	}
	if err := b.volumesPhase(ctx); err != nil {
		return err
	}
	if *capmvmRun {
		if err := b.capmvmPhase(ctx); err != nil {
			return err
		}
	}
	if b.o.micro {
		b.step("Go micro-benchmarks (-benchtime %s)", b.o.benchtime)
		if err := b.microBenchmarks(ctx); err != nil {
			return err
		}
	}
	b.step("done")
	return nil
}

// vmPhases runs everything that needs real VMs, on one daemon.
func (b *bench) vmPhases(ctx context.Context) error {
	d, err := b.startDaemon(ctx, "vms", true, "--start-paused")
	if err != nil {
		return err
	}
	m, err := measureMemory(ctx, d, 0, "idle, just started")
	if err != nil {
		return err
	}
	b.mem = append(b.mem, m)

	b.step("first create: pulls the kernel and initrd images into containerd")
	if b.firstPull, err = b.createOne(ctx, d, "first", "vm-000", b.o.poll); err != nil {
		return err
	}
	if _, err := b.deleteOne(ctx, d, b.firstPull.uid, b.o.poll); err != nil {
		return err
	}

	b.scans = append(b.scans, b.scanProc(d))
	if err := b.measureIdle(ctx, d); err != nil {
		return err
	}
	b.step("create→running: %d VMs one at a time", b.o.seq)
	c0 := b.cpuSnapshot(d)
	for i := range b.o.seq {
		s, err := b.createOne(ctx, d, "seq", fmt.Sprintf("vm-%03d", i), b.o.poll)
		if err != nil {
			return err
		}
		b.seq = append(b.seq, s)
	}
	b.addCPU("1 at a time", len(b.seq), c0, d)
	type batch struct {
		ns   string
		uids []string
	}
	var batches []batch
	n := b.fit(d, b.o.conc*b.o.rounds, "the concurrent batches")
	c0 = b.cpuSnapshot(d)
	for r := range b.o.rounds {
		size := min(b.o.conc, n-r*b.o.conc)
		if size <= 0 {
			break
		}
		ns := fmt.Sprintf("conc-%d", r)
		b.step("create→running: %d VMs at once (batch %d of %d)", size, r+1, b.o.rounds)
		ss, err := b.createBatch(ctx, d, ns, size, b.o.poll)
		if err != nil {
			return err
		}
		b.concBatches = append(b.concBatches, ss)
		bt := batch{ns: ns}
		for _, s := range ss {
			bt.uids = append(bt.uids, s.uid)
		}
		batches = append(batches, bt)
	}
	b.addCPU(fmt.Sprintf("%d at once", b.o.conc), n, c0, d)

	b.step("delete: %d VMs one at a time", len(b.seq))
	for _, s := range b.seq {
		ds, err := b.deleteOne(ctx, d, s.uid, b.o.poll)
		if err != nil {
			return err
		}
		b.delSeq = append(b.delSeq, ds)
	}
	for _, bt := range batches {
		b.step("delete: %d VMs at once", len(bt.uids))
		ds, err := b.deleteBatch(ctx, d, bt.ns, bt.uids, b.o.poll)
		if err != nil {
			return err
		}
		b.delBatches = append(b.delBatches, ds)
	}

	burst := b.fit(d, b.o.burst, "the throughput batch")
	if burst < 1 {
		return errors.New("no memory left for the throughput batch")
	}
	b.step("throughput: %d VMs at once", burst)
	c0 = b.cpuSnapshot(d)
	if b.burst, err = b.createBatch(ctx, d, "burst", burst, b.pollFor(burst)); err != nil {
		return err
	}
	b.addCPU(fmt.Sprintf("%d at once", burst), burst, c0, d)
	got, err := d.Client.GetMicroVM(ctx, &v1alpha1.GetMicroVMRequest{Uid: b.burst[0].uid})
	if err != nil {
		return err
	}
	b.template = got.GetMicrovm()
	b.step("List of the %d running VMs, %d calls", burst, b.o.listCalls)
	if b.list100, err = listTimes(ctx, d, &v1alpha1.ListMicroVMsRequest{}, b.o.listCalls, burst); err != nil {
		return err
	}

	more := b.fit(d, b.o.rssVMs-burst, fmt.Sprintf("the memory figure (%d VMs wanted)", b.o.rssVMs))
	c0 = b.cpuSnapshot(d)
	for i := 0; i < more; i += b.o.burst {
		size := min(b.o.burst, more-i)
		b.step("memory: %d more VMs at once (%d running)", size, burst+i)
		ss, err := b.createBatch(ctx, d, fmt.Sprintf("rss-%d", i/b.o.burst), size, b.pollFor(size))
		if err != nil {
			return err
		}
		b.rss = append(b.rss, ss...)
	}
	running := burst + more
	if more > 0 {
		b.addCPU(fmt.Sprintf("%d more at once, %d running", more, burst), more, c0, d)
	}
	b.scans = append(b.scans, b.scanProc(d))
	if err := b.measureIdle(ctx, d); err != nil {
		return err
	}
	if m, err = measureMemory(ctx, d, running, fmt.Sprintf("%d VMs running (paused)", running)); err != nil {
		return err
	}
	b.mem = append(b.mem, m)
	if m.vmmCount != running {
		b.notes = append(b.notes, fmt.Sprintf("%d VMM processes found for %d CREATED VMs", m.vmmCount, running))
	}

	b.step("delete: all %d VMs at once", running)
	var all []string
	for _, s := range append(append(series{}, b.burst...), b.rss...) {
		all = append(all, s.uid)
	}
	c0 = b.cpuSnapshot(d)
	if b.delAll, err = b.deleteBatch(ctx, d, "", all, b.pollFor(len(all))); err != nil {
		return err
	}
	b.addCPU(fmt.Sprintf("delete: all %d at once", len(all)), len(all), c0, d)
	if left := b.leftovers(ctx, d); len(left) > 0 {
		return fmt.Errorf("deleted VMs left things behind: %s", strings.Join(left, "; "))
	}
	d.Stop()
	return nil
}

func (b *bench) pollFor(n int) time.Duration {
	if n <= 20 {
		return b.o.poll
	}
	return b.o.burstPoll
}

// fit returns how many of want more paused VMs fit in the host's available
// memory (keeping 2 GiB and a 25% margin free), judging a VM by the mean
// RSS of the daemon's VMMs, measured now or when some last ran (before any
// ran: its guest memory plus 64 MiB). Scaling down is noted in the report.
func (b *bench) fit(d *framework.Daemon, want int, what string) int {
	avail, err := meminfoKB("MemAvailable")
	if err != nil || want <= 0 {
		return max(want, 0)
	}
	var sum, n int64
	for _, pid := range framework.VMMProcesses(d.StateDir) {
		if pid == d.Pid() {
			continue
		}
		if kb, err := procStatusKB(pid, "VmRSS"); err == nil {
			sum += kb
			n++
		}
	}
	if n > 0 {
		b.vmmKB = max(sum/n, 1024)
	}
	perVM := b.vmmKB
	if perVM == 0 {
		perVM = int64(b.o.memMB+64) << 10
	}
	room := int((avail - 2<<20) / (perVM * 5 / 4))
	if room >= want {
		return want
	}
	room = max(room, 0)
	msg := fmt.Sprintf("memory is short for %s: %s available, about %s per paused VM: ran %d VMs instead of %d",
		what, mib(avail), mib(perVM), room, want)
	b.notes = append(b.notes, msg)
	b.step("%s", msg)
	return room
}

// leftovers checks that the daemon left no VMM process, containerd lease
// or mount behind once its VMs are deleted.
func (b *bench) leftovers(ctx context.Context, d *framework.Daemon) []string {
	var left []string
	for _, pid := range framework.VMMProcesses(d.StateDir) {
		if pid != d.Pid() {
			left = append(left, fmt.Sprintf("process %d", pid))
		}
	}
	c, err := b.env.Containerd.Client(framework.ContainerdNamespace)
	if err != nil {
		return append(left, err.Error())
	}
	defer c.Close()
	ls, err := c.LeasesService().List(ctx)
	if err != nil {
		return append(left, err.Error())
	}
	for _, l := range ls {
		left = append(left, "containerd lease "+l.ID)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		if strings.Contains(line, d.StateDir) {
			left = append(left, "mount "+line)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(d.StateDir, "vm"))
	for _, e := range entries {
		sub, _ := os.ReadDir(filepath.Join(d.StateDir, "vm", e.Name()))
		if len(sub) > 0 {
			left = append(left, fmt.Sprintf("%d VM folders in namespace %s", len(sub), e.Name()))
		}
	}
	return left
}

// cleanup deletes the VMs of every daemon still running, stops the
// daemons, kills any VMM they could not remove (by pid) and stops
// containerd and the registry.
func (b *bench) cleanup() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var errs []error
	for i := len(b.daemons) - 1; i >= 0; i-- {
		d := b.daemons[i]
		if d.Pid() == 0 {
			continue
		}
		if d.withVMs {
			if err := d.DeleteAll(ctx); err != nil {
				errs = append(errs, fmt.Errorf("deleting the VMs of %s: %w", d.StateDir, err))
			}
		}
		d.Stop()
	}
	for _, d := range b.daemons {
		for _, pid := range framework.VMMProcesses(d.StateDir) {
			if pid == os.Getpid() {
				continue
			}
			errs = append(errs, fmt.Errorf("killed VMM %d left by %s", pid, d.StateDir))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if b.env != nil {
		if err := b.env.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// hostInfo describes the machine for the report's header.
func (b *bench) hostInfo() {
	model := "unknown CPU"
	if ci, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(ci), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	total, _ := meminfoKB("MemTotal")
	avail, _ := meminfoKB("MemAvailable")
	load, _ := os.ReadFile("/proc/loadavg")
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	qemu := "qemu-system-x86_64 not found"
	if out, err := exec.Command("qemu-system-x86_64", "--version").Output(); err == nil {
		qemu, _, _ = strings.Cut(string(out), "\n")
	}
	b.host = []string{
		fmt.Sprintf("host:   %d CPUs (%s), %.1f GiB RAM, %.1f GiB available, load average %s at start",
			runtime.NumCPU(), model, float64(total)/(1<<20), float64(avail)/(1<<20), strings.Join(strings.Fields(string(load))[:3], " ")),
		fmt.Sprintf("        Linux %s, %s (TCG)", strings.TrimSpace(string(kernel)), qemu),
	}
}
