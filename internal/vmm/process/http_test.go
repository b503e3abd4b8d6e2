package process

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A server on a unix socket whose path is too long for a socket address
// (reached through the folder's descriptor), that receives the
// descriptors passed with a request, as Cloud Hypervisor's does.
func TestDoPassesDescriptors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	if SocketArg(dir, "api.sock") != "api.sock" {
		t.Fatalf("SocketArg of a long path = %q, want the bare name", SocketArg(dir, "api.sock"))
	}
	if short := SocketArg("/vm", "api.sock"); short != "/vm/api.sock" {
		t.Fatalf("SocketArg(/vm) = %q", short)
	}
	name, done, err := shortSocketPath(sock)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
	done()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	type got struct {
		req   string
		body  string
		stats []unix.Stat_t
	}
	ch := make(chan got, 1)
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		var g got
		var data []byte
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4*4))
		for !bytes.Contains(data, []byte("\r\n\r\n")) || !bytes.HasSuffix(data, []byte("}")) {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			data = append(data, buf[:n]...)
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				fds, _ := unix.ParseUnixRights(&m)
				for _, fd := range fds {
					var st unix.Stat_t
					_ = unix.Fstat(fd, &st)
					g.stats = append(g.stats, st)
					unix.Close(fd)
				}
			}
		}
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		g.req = r.Method + " " + r.URL.Path + " " + r.Header.Get("Content-Type")
		b := make([]byte, r.ContentLength)
		_, _ = r.Body.Read(b)
		g.body = string(b)
		ch <- g
		c.Write([]byte("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n[\"a\",\"b\"]"))
	}()

	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := Do(ctx, sock, "PUT", "/api/v1/vm.add-net", []byte(`{"id":"net0"}`), []*os.File{f})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 500 || string(resp.Body) != `["a","b"]` {
		t.Errorf("response %d %q", resp.Status, resp.Body)
	}
	g := <-ch
	if g.req != "PUT /api/v1/vm.add-net application/json" || g.body != `{"id":"net0"}` {
		t.Errorf("server got %q %q", g.req, g.body)
	}
	var null unix.Stat_t
	if err := unix.Stat(os.DevNull, &null); err != nil {
		t.Fatal(err)
	}
	if len(g.stats) != 1 || g.stats[0].Rdev != null.Rdev || g.stats[0].Mode&unix.S_IFMT != unix.S_IFCHR {
		t.Errorf("descriptors received: %+v", g.stats)
	}

	// Nothing listening: an error, not a hang.
	if _, err := Do(ctx, filepath.Join(dir, "none.sock"), "GET", "/", nil, nil); err == nil {
		t.Error("Do to a missing socket succeeded")
	}
}

func TestIsELFAndAPIError(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"elf": "\x7fELF\x02", "bz": "MZ", "short": "\x7f"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		ok, err := IsELF(filepath.Join(dir, name))
		if err != nil || ok != (name == "elf") {
			t.Errorf("IsELF(%s) = %v, %v", name, ok, err)
		}
	}
	if _, err := IsELF(filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("IsELF of a missing file: %v", err)
	}
	e := &APIError{Method: "PUT", Path: "/drives/root", Status: 400, Message: "no such file"}
	if e.Error() != "PUT /drives/root: 400 Bad Request: no such file" {
		t.Errorf("%q", e.Error())
	}
}
