package hostnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// dnsmasqConfig renders the dnsmasq configuration of a config whose state
// folder is dir. dnsmasq serves DHCP only (port=0 turns its DNS off) on the
// bridge, from the dynamic range; the VIP range lies outside it and is
// never leased. Static leases are dhcp-host lines of this file, which
// dnsmasq reads before it drops root (a dhcp-hostsfile is read after, and
// the state folder is root's).
func dnsmasqConfig(c *Config, r *resolved, dir string) []byte {
	var b bytes.Buffer
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("# Written by flintlockd host network apply; it is rewritten on every apply.")
	line("port=0")
	line("interface=%s", c.Bridge)
	line("except-interface=lo")
	line("bind-dynamic")
	line("no-resolv")
	line("no-hosts")
	line("dhcp-authoritative")
	mask := net.IP(net.CIDRMask(r.subnet.Bits(), 32)).String()
	line("dhcp-range=%s,%s,%s,%s", r.dhcp.first, r.dhcp.last, mask, c.DHCP.LeaseTime)
	line("dhcp-option=option:router,%s", r.router)
	if len(r.dns) > 0 {
		ds := make([]string, len(r.dns))
		for i, d := range r.dns {
			ds[i] = d.String()
		}
		line("dhcp-option=option:dns-server,%s", strings.Join(ds, ","))
	}
	if r.vip != nil {
		line("# VIP range %s: outside dhcp-range, never leased.", r.vip)
	}
	for _, l := range r.leases {
		if l.hostname != "" {
			line("dhcp-host=%s,%s,%s", l.mac, l.ip, l.hostname)
		} else {
			line("dhcp-host=%s,%s", l.mac, l.ip)
		}
	}
	line("dhcp-leasefile=%s", filepath.Join(dir, dnsmasqLeases))
	line("pid-file=%s", filepath.Join(dir, dnsmasqPid))
	line("log-facility=%s", filepath.Join(dir, dnsmasqLog))
	line("log-dhcp")
	return b.Bytes()
}

// confArg is the argument that marks a dnsmasq as the one of dir.
func confArg(dir string) string { return "--conf-file=" + filepath.Join(dir, dnsmasqConf) }

// dnsmasqPID returns the pid of the dnsmasq of dir when it runs (its pid
// file names a live process started with our configuration), else 0.
func dnsmasqPID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, dnsmasqPid))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	for _, a := range bytes.Split(cmdline, []byte{0}) {
		if string(a) == confArg(dir) {
			return pid
		}
	}
	return 0
}

// startDnsmasq starts dnsmasq on the configuration in dir. dnsmasq forks
// into the background once it is set up and the parent reports start-up
// errors, so a zero exit means it serves; the daemon is not a child of
// this process and outlives it.
func startDnsmasq(ctx context.Context, bin, dir string) error {
	log, err := os.CreateTemp(dir, ".dnsmasq-start-*")
	if err != nil {
		return fmt.Errorf("hostnet: dnsmasq: %w", err)
	}
	defer os.Remove(log.Name())
	defer log.Close()
	cmd := exec.CommandContext(ctx, bin, confArg(dir))
	cmd.Stdout, cmd.Stderr = log, log
	// Its own session: no terminal signal reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(log.Name())
		return fmt.Errorf("hostnet: starting dnsmasq: %w: %s", err, bytes.TrimSpace(out))
	}
	deadline := time.Now().Add(5 * time.Second)
	for dnsmasqPID(dir) == 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("hostnet: dnsmasq started but wrote no pid file in %s", dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// stopDnsmasq ends the dnsmasq of dir (SIGTERM, then SIGKILL after 5 s)
// and waits until it is gone. Not running is fine.
func stopDnsmasq(dir string) error {
	pid := dnsmasqPID(dir)
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("hostnet: stopping dnsmasq %d: %w", pid, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for dnsmasqPID(dir) == pid {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			deadline = time.Now().Add(5 * time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
