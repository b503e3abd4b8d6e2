package testenv

import (
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
)

// A namespace is its own network: a listener made in it (Serve) is reached
// through DialContext/HTTPClient and not from the test's namespace; Do runs
// Go code inside it; it is gone after the test.
func TestNetNS(t *testing.T) {
	var name string
	t.Run("inside", func(t *testing.T) {
		n := NewNetNS(t, "lmtenv")
		name = n.Name
		if out := n.Run("ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
			t.Fatalf("lo is not up: %s", out)
		}
		if got := n.Run("ip", "-o", "link", "show"); strings.Count(got, "\n") != 1 {
			t.Fatalf("a new namespace has more than lo:\n%s", got)
		}
		n.Serve("127.0.0.1:18080", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, "hello from "+name)
		}))
		resp, err := n.HTTPClient().Get("http://127.0.0.1:18080/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "hello from "+name {
			t.Fatalf("body %q", b)
		}
		if c, err := net.Dial("tcp", "127.0.0.1:18080"); err == nil {
			c.Close()
			t.Fatal("the namespace's listener is reachable from outside it")
		}
		var links []net.Interface
		n.Do(func() { links, _ = net.Interfaces() })
		if len(links) != 1 || links[0].Name != "lo" {
			t.Fatalf("Do did not run inside: interfaces %v", links)
		}
		if err := n.In(func() error { panic("boom") }); err == nil || !strings.Contains(err.Error(), "boom") {
			t.Fatalf("a panic in In: %v", err)
		}
		if _, err := n.Try("false"); err == nil {
			t.Fatal("Try of a failing command: no error")
		}
		if !strings.Contains(n.Snapshot(), "$ ip addr show") {
			t.Fatal("snapshot without addresses")
		}
	})
	if _, err := os.Stat("/run/netns/" + name); !os.IsNotExist(err) {
		t.Fatalf("namespace %s left behind: %v", name, err)
	}
}
