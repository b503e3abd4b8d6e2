package qemu

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Acceleration modes for Options.Accel.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// AccelChoice is the acceleration a kernel runs with, and why.
type AccelChoice struct {
	Accel  string // AccelKVM or AccelTCG
	Reason string
}

// probeKey identifies one kernel file version.
type probeKey struct {
	path  string
	size  int64
	mtime time.Time
}

// probe is one KVM boot probe; done closes when choice is set.
type probe struct {
	done   chan struct{}
	choice AccelChoice
}

// Accel returns the acceleration VMs booting kernel get. With Accel "auto"
// the first call per kernel file (path, size and mtime) boots it briefly
// under KVM and keeps KVM only if the kernel prints its banner within
// ProbeTimeout; the outcome is cached and logged once. Hosts where /dev/kvm
// exists but cannot run a stock guest (a PVM host, where the boot stalls
// right after "Probing EDD") thus fall back to TCG.
func (p *Provider) Accel(ctx context.Context, kernel string) (AccelChoice, error) {
	switch p.opts.Accel {
	case AccelKVM, AccelTCG:
		return AccelChoice{Accel: p.opts.Accel, Reason: "configured"}, nil
	}
	st, err := os.Stat(kernel)
	if err != nil {
		return AccelChoice{}, fmt.Errorf("kernel: %w", err)
	}
	key := probeKey{path: kernel, size: st.Size(), mtime: st.ModTime()}
	p.mu.Lock()
	pr, ok := p.probes[key]
	if !ok {
		pr = &probe{done: make(chan struct{})}
		p.probes[key] = pr
		// The probe outlives the caller's ctx: others may wait on it.
		go func() {
			pr.choice = p.probeKVM(context.WithoutCancel(ctx), kernel)
			p.log.Info("qemu acceleration chosen", "kernel", kernel, "accel", pr.choice.Accel, "reason", pr.choice.Reason)
			close(pr.done)
		}()
	}
	p.mu.Unlock()
	select {
	case <-pr.done:
		return pr.choice, nil
	case <-ctx.Done():
		return AccelChoice{}, fmt.Errorf("kvm probe: %w", ctx.Err())
	}
}

// kernelBanner is the first line a booting Linux kernel prints.
const kernelBanner = "Linux version"

// probeKVM boots kernel under KVM without disks or initrd and watches the
// serial port for the kernel banner.
func (p *Provider) probeKVM(ctx context.Context, kernel string) AccelChoice {
	tcg := func(format string, a ...any) AccelChoice {
		return AccelChoice{Accel: AccelTCG, Reason: fmt.Sprintf(format, a...)}
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return tcg("kvm unavailable: %v", err)
	}
	f.Close()

	cmd := exec.CommandContext(ctx, p.binary,
		"-M", "microvm,accel=kvm", "-cpu", "host", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel,
		"-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1 reboot=t",
		"-serial", "stdio")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return tcg("kvm probe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		return tcg("kvm probe: %v", err)
	}
	var (
		mu   sync.Mutex
		last string
	)
	booted := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if strings.Contains(line, kernelBanner) {
				booted <- true
				return
			}
			if line != "" {
				mu.Lock()
				last = line
				mu.Unlock()
			}
		}
		booted <- false // QEMU exited
	}()
	timer := time.NewTimer(p.opts.ProbeTimeout)
	defer timer.Stop()
	var choice AccelChoice
	select {
	case ok := <-booted:
		if ok {
			choice = AccelChoice{Accel: AccelKVM, Reason: "kvm boots the kernel (banner seen)"}
		} else {
			_ = cmd.Wait()
			return tcg("qemu with kvm exited before the kernel banner: %s", lastLine(stderr.String()))
		}
	case <-timer.C:
		mu.Lock()
		choice = tcg("no kernel banner within %s under kvm (last serial output %q)", p.opts.ProbeTimeout, last)
		mu.Unlock()
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return choice
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
