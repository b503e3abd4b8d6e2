package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// NetNS is a named network namespace ("ip netns add") owned by a test, so
// that both Go code (Do) and commands (Run) can work in it.
type NetNS struct {
	Name string
	t    testing.TB
}

// NewNetNS creates a namespace named prefix-<random> with lo up, removed
// (with every process left in it) when the test ends. It skips the test
// when not root.
func NewNetNS(t testing.TB, prefix string) *NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: network namespaces need root")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	n := &NetNS{Name: prefix + "-" + hex.EncodeToString(b), t: t}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() {
		// Processes left behind (a dnsmasq of a failed test) are ours.
		out, _ := exec.Command("ip", "netns", "pids", n.Name).Output()
		for _, p := range strings.Fields(string(out)) {
			// This process shows up when a thread locked into the
			// namespace was its main thread.
			if pid, err := strconv.Atoi(p); err == nil && pid != os.Getpid() {
				if proc, err := os.FindProcess(pid); err == nil {
					_ = proc.Kill()
				}
			}
		}
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	n.Run("ip", "link", "set", "lo", "up")
	return n
}

// Command is a command that runs in the namespace.
func (n *NetNS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Try runs a command in the namespace and returns its combined output.
func (n *NetNS) Try(name string, args ...string) (string, error) {
	out, err := n.Command(name, args...).CombinedOutput()
	return string(out), err
}

// Run runs a command in the namespace and returns its output; an error
// fails the test.
func (n *NetNS) Run(name string, args ...string) string {
	n.t.Helper()
	out, err := n.Try(name, args...)
	if err != nil {
		n.t.Fatalf("[%s] %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return out
}

// Do runs f on an OS thread inside the namespace: netlink, nftables,
// sockets and child processes f makes belong to it. A panic in f fails
// the test.
func (n *NetNS) Do(f func()) {
	n.t.Helper()
	if err := n.In(func() error { f(); return nil }); err != nil {
		n.t.Fatalf("in namespace %s: %v", n.Name, err)
	}
}

// In runs f on a locked thread moved into the namespace and moves the
// thread back before unlocking it; a panic in f is returned as an error.
// Threads are not thrown away: a child started with Pdeathsig (the test
// registry, containerd, dnsmasq) dies with the thread that forked it, and
// that may be any thread of the pool. Only a thread that cannot be moved
// back is left locked, to end with f.
func (n *NetNS) In(f func() error) error {
	done := make(chan error, 1)
	go func() {
		var err error
		back := false
		runtime.LockOSThread()
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
			}
			if back {
				runtime.UnlockOSThread()
			}
			done <- err
		}()
		orig, err := netns.Get()
		if err != nil {
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(n.Name)
		if err != nil {
			back = true
			return
		}
		defer h.Close()
		if err = netns.Set(h); err != nil {
			back = true
			return
		}
		defer func() { back = netns.Set(orig) == nil }()
		err = f()
	}()
	return <-done
}

// Snapshot is the namespace's network as the tools print it (links with
// details, addresses, routes of all tables, the nftables ruleset, IPv4
// forwarding), with the bridge timers that run on their own blanked.
func (n *NetNS) Snapshot() string {
	n.t.Helper()
	var b strings.Builder
	for _, c := range [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "addr", "show"},
		{"ip", "route", "show", "table", "all"},
		{"nft", "list", "ruleset"},
		{"sysctl", "net.ipv4.ip_forward"},
	} {
		fmt.Fprintf(&b, "$ %s\n%s\n", strings.Join(c, " "), n.Run(c[0], c[1:]...))
	}
	return timerRE.ReplaceAllString(b.String(), "${1} -")
}

var timerRE = regexp.MustCompile(`(_timer)\s+[0-9.]+`)

// Serve runs an HTTP handler on addr inside the namespace until the test
// ends.
func (n *NetNS) Serve(addr string, h http.Handler) {
	n.t.Helper()
	var lis net.Listener
	var err error
	n.Do(func() { lis, err = net.Listen("tcp", addr) })
	if err != nil {
		n.t.Fatalf("[%s] listen %s: %v", n.Name, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	n.t.Cleanup(func() { _ = srv.Close() })
}

// DialContext dials addr from inside the namespace (the socket belongs to
// it; it can be used from any goroutine afterwards).
func (n *NetNS) DialContext(ctx context.Context, network, addr string) (c net.Conn, err error) {
	if e := n.In(func() error {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return nil
	}); e != nil {
		return nil, e
	}
	return c, err
}

// HTTPClient is an HTTP client whose connections start inside the
// namespace.
func (n *NetNS) HTTPClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.DialContext}}
}

// ForwardLoopback makes a TCP address of the test process's own namespace
// (a registry on 127.0.0.1, say) reachable at the same address inside n,
// by relaying connections, until the test ends. No link or address is
// added to either namespace.
func (n *NetNS) ForwardLoopback(t testing.TB, addr string) {
	t.Helper()
	var lis net.Listener
	var err error
	n.Do(func() { lis, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatalf("[%s] relay listener on %s: %v", n.Name, addr, err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					t.Logf("[%s] relay to %s: %v", n.Name, addr, err)
					return
				}
				defer out.Close()
				done := make(chan struct{}, 2)
				relay := func(dst, src net.Conn) {
					_, _ = io.Copy(dst, src)
					if c, ok := dst.(*net.TCPConn); ok {
						_ = c.CloseWrite()
					}
					done <- struct{}{}
				}
				go relay(out, in)
				go relay(in, out)
				<-done
				<-done
			}()
		}
	}()
}
