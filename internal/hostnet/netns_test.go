package hostnet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// testNS is a named network namespace ("ip netns add") for one test, so
// that both Go code (in) and commands (run) can work in it. It and the
// processes left in it are removed when the test ends.
type testNS struct {
	t    *testing.T
	name string
}

func newNS(t *testing.T) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: network namespaces need root")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	n := &testNS{t: t, name: "lmhn-" + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		// Processes left behind (a dnsmasq of a failed test) are ours.
		out, _ := exec.Command("ip", "netns", "pids", n.name).Output()
		for _, p := range strings.Fields(string(out)) {
			// This process is listed when a locked thread left in the
			// namespace is its main thread.
			if p != strconv.Itoa(os.Getpid()) {
				_ = exec.Command("kill", "-9", p).Run()
			}
		}
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	n.run("ip", "link", "set", "lo", "up")
	return n
}

// in runs f on an OS thread moved into the namespace, and moves it back.
func (n *testNS) in(f func()) {
	n.t.Helper()
	done := make(chan any, 1)
	go func() {
		runtime.LockOSThread()
		back := false
		defer func() {
			p := recover()
			if back {
				runtime.UnlockOSThread()
			}
			done <- p
		}()
		orig, err := netns.Get()
		if err != nil {
			panic(err)
		}
		defer orig.Close()
		h, err := netns.GetFromName(n.name)
		if err != nil {
			panic(err)
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			panic(err)
		}
		// Moved back and unlocked after, not thrown away: a thread's end
		// kills the children it started with Pdeathsig.
		defer func() { back = netns.Set(orig) == nil }()
		f()
	}()
	if p := <-done; p != nil {
		n.t.Fatalf("in netns %s: %v", n.name, p)
	}
}

// run runs a command in the namespace and returns its output, failing the
// test on error.
func (n *testNS) run(args ...string) string {
	n.t.Helper()
	out, err := n.try(args...)
	if err != nil {
		n.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (n *testNS) try(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// snapshot is the namespace's network state as the tools print it: links
// with details, addresses, routes of every table, the nftables ruleset and
// the sysctls apply may change.
func (n *testNS) snapshot() string {
	n.t.Helper()
	var b strings.Builder
	for _, c := range [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "addr", "show"},
		{"ip", "route", "show", "table", "all"},
		{"nft", "list", "ruleset"},
		{"sysctl", "net.ipv4.ip_forward"},
	} {
		fmt.Fprintf(&b, "$ %s\n%s\n", strings.Join(c, " "), n.run(c...))
	}
	// Bridge timers run on their own.
	return timerRE.ReplaceAllString(b.String(), "${1} -")
}

var timerRE = regexp.MustCompile(`(_timer)\s+[0-9.]+`)
