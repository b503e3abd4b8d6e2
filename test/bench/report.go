package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// table is one section of the report.
type table struct {
	title string
	head  []string
	rows  [][]string
	notes []string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) note(format string, args ...any) {
	t.notes = append(t.notes, fmt.Sprintf(format, args...))
}

func (t *table) print(w io.Writer) {
	fmt.Fprintf(w, "\n%s\n%s\n", t.title, strings.Repeat("=", len([]rune(t.title))))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.head, "\t"))
	rule := make([]string, len(t.head))
	for i, h := range t.head {
		rule[i] = strings.Repeat("-", len([]rune(h)))
	}
	fmt.Fprintln(tw, strings.Join(rule, "\t"))
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
	for _, n := range t.notes {
		fmt.Fprintf(w, "  %s\n", n)
	}
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 1:
		return fmt.Sprintf("%.3f ms", v)
	case v < 100:
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.0f ms", v)
}

// secs formats a duration in seconds.
func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// mib formats kibibytes as MiB.
func mib(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

// ratio formats a/b as "0.42×".
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// verdict says whether a measured value meets its goal.
func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// flatten joins batches into one series.
func flatten(bs []series) series {
	var out series
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// meanRate is the mean of the batches' rates.
func meanRate(bs []series) float64 {
	if len(bs) == 0 {
		return 0
	}
	var sum float64
	for _, b := range bs {
		sum += b.rate()
	}
	return sum / float64(len(bs))
}

// report prints every figure gathered (a run stopped by an error prints
// what it has).
func (b *bench) report() {
	w := b.out
	workers := "default (8)"
	if b.o.workers > 0 {
		workers = fmt.Sprint(b.o.workers)
	}
	fmt.Fprintf(w, "\nflintlockd benchmark, %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	for _, h := range b.host {
		fmt.Fprintln(w, h)
	}
	fmt.Fprintf(w, "daemon: flintlockd --start-paused: QEMU starts with the guest's CPUs stopped, so the guest's own\n"+
		"        boot is NOT in these figures; workers %s, log level info, TCG\n", workers)
	fmt.Fprintf(w, "VMs:    kernel + initrd images from a loopback registry (no root volume, no network), cloud-init\n"+
		"        disk, 1 vCPU, %d MiB\n", b.o.memMB)

	conc := flatten(b.concBatches)
	createP50 := func(ss series) time.Duration { return pct(ss.latencies(), 0.5) }
	if len(b.seq)+len(conc)+len(b.burst) > 0 {
		t := &table{
			title: "1. Create → running (Get says CREATED), images cached",
			head:  []string{"case", "VMs", "p50", "p99", "polled p50", "polled p99", "API ack p50", "target p50", "p50/target"},
		}
		row := func(name string, ss series) {
			if len(ss) == 0 {
				return
			}
			p50 := createP50(ss)
			t.add(name, fmt.Sprint(len(ss)), ms(p50), ms(pct(ss.latencies(), 0.99)),
				ms(pct(ss.polls(), 0.5)), ms(pct(ss.polls(), 0.99)), ms(pct(ss.acks(), 0.5)),
				"≤"+ms(targetCreateP50), ratio(float64(p50), float64(targetCreateP50)))
		}
		row("1 at a time", b.seq)
		row(fmt.Sprintf("%d at once (%s)", b.o.conc, plural(len(b.concBatches), "batch", "batches")), conc)
		row(fmt.Sprintf("%d at once", len(b.burst)), b.burst)
		if !b.firstPull.done.IsZero() {
			t.add("first pull (not cached)", "1", ms(b.firstPull.latency()), "", ms(b.firstPull.polled()), "",
				ms(b.firstPull.ack()), "", "")
		}
		t.note("p50/p99: from the client's clock just before CreateMicroVM to flintlockd's own stamp of the")
		t.note("  CREATED transition (the record's updated_at, set in the store transaction that makes the VM")
		t.note("  CREATED; same host clock). polled: the first poll that saw CREATED: GetMicroVM every %s", b.o.poll)
		t.note("  (1 at a time), ListMicroVMs of the batch's namespace every %s (batches of up to 20) or %s.", b.o.poll, b.o.burstPoll)
		t.note("API ack: the CreateMicroVM call's round trip. p99 over fewer than 100 VMs is the slowest VM.")
		t.note("first pull: the first VM on a fresh containerd (kernel and initrd pulled from the registry and")
		t.note("  unpacked); every other VM finds the images cached.")
		if n := b.seq.unstamped() + conc.unstamped() + b.burst.unstamped(); n > 0 {
			t.note("%d samples had no usable daemon stamp and use the polled time instead.", n)
		}
		t.print(w)
	}

	if len(b.burst) > 0 {
		t := &table{
			title: "2. Create throughput (VMs created at once until the last is CREATED)",
			head:  []string{"case", "VMs", "wall", "creates/s", "upstream", "vs upstream", "aim (10×)", "vs aim"},
		}
		mid := (upstreamRateLo + upstreamRateHi) / 2
		aim := aimFactor * mid
		vsUp := func(r float64) string { return fmt.Sprintf("%.1f–%.1f×", r/upstreamRateHi, r/upstreamRateLo) }
		r := b.burst.rate()
		t.add(fmt.Sprintf("%d at once", len(b.burst)), fmt.Sprint(len(b.burst)), secs(b.burst.wall()),
			fmt.Sprintf("%.1f", r), fmt.Sprintf("%.0f–%.0f/s", upstreamRateLo, upstreamRateHi), vsUp(r),
			fmt.Sprintf("%.0f/s", aim), ratio(r, aim))
		if len(b.concBatches) > 0 {
			r := meanRate(b.concBatches)
			t.add(fmt.Sprintf("%d at once (mean of %d)", b.o.conc, len(b.concBatches)), fmt.Sprint(len(b.concBatches[0])),
				secs(b.concBatches[0].wall()), fmt.Sprintf("%.1f", r), "", "", "", "")
		}
		if len(b.rss) > 0 {
			t.add(fmt.Sprintf("%d more at once, %d running", len(b.rss), len(b.burst)), fmt.Sprint(len(b.rss)),
				secs(b.rss.wall()), fmt.Sprintf("%.1f", b.rss.rate()), "", "", "", "")
		}
		t.note("wall: first CreateMicroVM sent → last VM CREATED (daemon stamp). Upstream: flintlockd on this")
		t.note("  kind of machine, 7–8 creates/s at 100 concurrent.")
		t.print(w)
	}

	if len(b.cpu) > 0 {
		t := &table{
			title: "2b. Where the CPU goes (ms of CPU time per VM)",
			head:  []string{"case", "VMs", "machine", "flintlockd", "containerd", "QEMU", "bench client", "other", "rate cap"},
		}
		f := func(v float64) string { return fmt.Sprintf("%.1f", v) }
		for _, r := range b.cpu {
			u := r.use
			capRate := "-"
			if ours := u.daemon + u.containerd + u.vmm; ours > 0 {
				capRate = fmt.Sprintf("%.0f/s", float64(runtime.NumCPU())*1000/ours)
			}
			t.add(r.name, fmt.Sprint(r.vms), f(u.machine), f(u.daemon), f(u.containerd), f(u.vmm), f(u.self), f(u.other()), capRate)
		}
		t.note("From /proc (user+system time, 10 ms ticks) over each case, divided by its VMs. machine: every")
		t.note("  CPU's busy time; other: the rest of the machine (other users, kernel threads). QEMU: the")
		t.note("  VMMs of the case (a delete's VMMs are gone by the end and not counted). rate cap: %d CPUs", runtime.NumCPU())
		t.note("  divided by the flintlockd + containerd + QEMU time per VM (the most an idle machine could do).")
		for _, sc := range b.scans {
			t.note("A /proc scan reading every process's command line (what the QEMU provider's process.Find")
			t.note("  does) with %d VMMs running, %d processes: %s.", sc.vmms, sc.procs, ms(sc.took))
		}
		for _, i := range b.idle {
			t.note("Idle for 1 s with %d paused VMMs: flintlockd used %.1f%% of a CPU, the VMMs %.1f%%, the whole",
				i.vmms, i.daemon, i.vmm)
			t.note("  machine (other users included) %.0f%% of one CPU.", i.host)
		}
		t.print(w)
	}

	delConc := flatten(b.delBatches)
	if len(b.delSeq)+len(delConc)+len(b.delAll) > 0 {
		t := &table{
			title: "3. Delete → gone (Get says NotFound)",
			head:  []string{"case", "VMs", "p50", "p99", "API ack p50", "deletes/s"},
		}
		row := func(name string, ss series, rate string) {
			if len(ss) == 0 {
				return
			}
			t.add(name, fmt.Sprint(len(ss)), ms(pct(ss.polls(), 0.5)), ms(pct(ss.polls(), 0.99)), ms(pct(ss.acks(), 0.5)), rate)
		}
		row("1 at a time", b.delSeq, "")
		row(fmt.Sprintf("%d at once (%s)", b.o.conc, plural(len(b.delBatches), "batch", "batches")), delConc, fmt.Sprintf("%.1f", meanRate(b.delBatches)))
		row(fmt.Sprintf("all %d at once", len(b.delAll)), b.delAll, fmt.Sprintf("%.1f", b.delAll.rate()))
		t.note("From DeleteMicroVM to the first poll that no longer finds the VM (the VMM stopped, its lease,")
		t.note("  files and record removed): GetMicroVM every %s one at a time, ListMicroVMs every %s", b.o.poll, b.o.poll)
		t.note("  (batches of up to 20) or %s; the poll period bounds the resolution.", b.o.burstPoll)
		t.print(w)
	}

	if len(b.list100)+len(b.list1000) > 0 {
		t := &table{
			title: "4. List latency (ListMicroVMs round trip over gRPC on loopback)",
			head:  []string{"case", "VMs returned", "calls", "p50", "p99", "goal", "p50/goal", "upstream", "speed-up"},
		}
		if len(b.list100) > 0 {
			p50 := pct(b.list100, 0.5)
			aim := time.Duration(float64(upstreamList100) / aimFactor)
			t.add(fmt.Sprintf("%d VMs stored, all running", len(b.burst)), fmt.Sprint(len(b.burst)), fmt.Sprint(len(b.list100)),
				ms(p50), ms(pct(b.list100, 0.99)), "≤"+ms(aim)+" (10×)", ratio(float64(p50), float64(aim)),
				"≈"+ms(upstreamList100), fmt.Sprintf("%.0f×", float64(upstreamList100)/float64(p50)))
		}
		if len(b.list1000) > 0 {
			p50 := pct(b.list1000, 0.5)
			t.add(fmt.Sprintf("%d records stored", b.o.records), fmt.Sprint(b.o.records), fmt.Sprint(len(b.list1000)),
				ms(p50), ms(pct(b.list1000, 0.99)), "≤"+ms(targetList1000), ratio(float64(p50), float64(targetList1000)), "", "")
		}
		if len(b.listNS) > 0 {
			t.add(fmt.Sprintf("one namespace of %d records", b.o.records), fmt.Sprint(b.listNSCount), fmt.Sprint(len(b.listNS)),
				ms(pct(b.listNS, 0.5)), ms(pct(b.listNS, 0.99)), "", "", "", "")
		}
		t.note("%d VMs stored: the real VMs of the throughput batch (the daemon holds nothing else).", len(b.burst))
		if b.recordBytes > 0 {
			t.note("%d records: copies of a real CREATED VM's record (%d bytes encoded) with new uids and names", b.o.records, b.recordBytes)
			t.note("  in %d namespaces, state FAILED, written with internal/store into a second flintlockd's", listNamespaces)
			t.note("  state folder before it started (the reconciler leaves FAILED records alone: no VMM runs).")
		}
		t.note("One warm-up call, then sequential calls; times include the client's decoding")
		if b.listBytes > 0 {
			t.note("  (the %d-record response is %.0f KiB; decoding it takes the client %s).", b.o.records, float64(b.listBytes)/1024, ms(b.listDecode))
		}
		t.print(w)
	}

	if len(b.mem) > 0 {
		t := &table{
			title: "5. flintlockd memory (VmRSS of its process)",
			head:  []string{"daemon state", "VmRSS", "VmHWM (peak)", "Go heap in use", "goroutines", "target", "RSS/target"},
		}
		for _, m := range b.mem {
			t.add(m.description, mib(m.rssKB), mib(m.hwmKB), mib(int64(m.heapInUse)/1024), fmt.Sprintf("%.0f", m.goroutines),
				"≤"+mib(targetRSSKB), ratio(float64(m.rssKB), targetRSSKB))
		}
		for _, m := range b.mem {
			if m.vmmCount > 0 {
				t.note("VMMs: %d paused QEMUs (guest memory %d MiB each, untouched while paused) use %s RSS in",
					m.vmmCount, b.o.memMB, mib(m.vmmRSSKB))
				t.note("  total, %s each on average (shared pages counted in each).", mib(m.vmmRSSKB/int64(m.vmmCount)))
			}
		}
		t.print(w)
	}

	if len(b.micro) > 0 {
		t := &table{
			title: fmt.Sprintf("6. Go micro-benchmarks (go test -run '^$' -bench . -benchtime %s)", b.o.benchtime),
			head:  []string{"package", "benchmark", "runs", "ms/op", "B/op", "allocs/op", "other"},
		}
		for _, r := range b.micro {
			if r.err != "" {
				t.add(r.pkg, "FAILED", "", "", "", "", r.err)
				continue
			}
			t.add(r.pkg, strings.TrimPrefix(r.name, "Benchmark"), fmt.Sprint(r.iters), fmt.Sprintf("%.3f", r.nsPerOp/1e6),
				r.bytesPerOp, r.allocsPerOp, strings.Join(r.extra, ", "))
		}
		t.print(w)
	}

	b.reportVolumes(w)
	b.reportCAPMVM(w)

	t := &table{title: "Summary against the goals", head: []string{"goal", "measured", "goal value", "verdict"}}
	if len(b.seq) > 0 {
		p := createP50(b.seq)
		t.add("create→running p50, 1 at a time", ms(p), "≤"+ms(targetCreateP50), verdict(p <= targetCreateP50))
	}
	if len(conc) > 0 {
		p := createP50(conc)
		t.add(fmt.Sprintf("create→running p50, %d at once", b.o.conc), ms(p), "≤"+ms(targetCreateP50), verdict(p <= targetCreateP50))
		b.cpuFloorNote(t, fmt.Sprintf("%d at once", b.o.conc), b.o.conc)
	}
	if len(b.burst) > 0 {
		r, aim := b.burst.rate(), aimFactor*(upstreamRateLo+upstreamRateHi)/2
		t.add(fmt.Sprintf("creates/s, %d at once", len(b.burst)), fmt.Sprintf("%.1f/s", r),
			fmt.Sprintf("≥%.0f/s (10× upstream)", aim), verdict(r >= aim))
	}
	if len(b.list100) > 0 {
		p, aim := pct(b.list100, 0.5), time.Duration(float64(upstreamList100)/aimFactor)
		t.add(fmt.Sprintf("List of %d p50", len(b.burst)), ms(p), "≤"+ms(aim)+" (10× upstream)", verdict(p <= aim))
	}
	if len(b.list1000) > 0 {
		p := pct(b.list1000, 0.5)
		t.add(fmt.Sprintf("List of %d p50", b.o.records), ms(p), "≤"+ms(targetList1000), verdict(p <= targetList1000))
	}
	for _, m := range b.mem {
		if m.vms > 0 {
			t.add(fmt.Sprintf("flintlockd RSS, %d VMs running", m.vms), mib(m.rssKB), "≤"+mib(targetRSSKB), verdict(m.rssKB <= targetRSSKB))
		}
	}
	b.capmvmSummary(t)
	for _, n := range b.notes {
		t.note("%s", n)
	}
	t.print(w)
}

// plural formats "1 batch", "3 batches".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// cpuFloorNote explains a batch's p50 by the CPU time its VMs need: with
// every VM needing c ms of CPU (flintlockd, containerd and its VMM) and n
// CPUs, half of a batch of k VMs cannot be running before c·k/2/n.
func (b *bench) cpuFloorNote(t *table, name string, k int) {
	for _, r := range b.cpu {
		if r.name != name {
			continue
		}
		c := r.use.daemon + r.use.containerd + r.use.vmm
		floor := time.Duration(c * float64(k) / 2 / float64(runtime.NumCPU()) * float64(time.Millisecond))
		t.note("%s: each VM costs %.0f ms of CPU (its VMM %.0f ms, flintlockd %.0f ms, containerd %.0f ms); on %d CPUs "+
			"half of %d VMs cannot be running before %s, however the work is ordered.",
			name, c, r.use.vmm, r.use.daemon, r.use.containerd, runtime.NumCPU(), k, ms(floor))
		return
	}
}
