package registryauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseConfig(t *testing.T) {
	doc := `{
	  "auths": {
	    "https://index.docker.io/v1/": {"auth": "` + b64("hubuser:hub:pass") + `"},
	    "192.0.2.10:5000": {"username": "u1", "password": "p1"},
	    "http://192.0.2.11:5000/v2/": {"identitytoken": "tok"},
	    "192.0.2.12": {},
	    "192.0.2.13": {"registrytoken": "x"}
	  },
	  "credsStore": "desktop",
	  "credHelpers": {"192.0.2.14": "ecr-login"}
	}`
	creds, warnings, err := parseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]credential{
		"docker.io":       {username: "hubuser", secret: "hub:pass"}, // the password keeps its colon
		"192.0.2.10:5000": {username: "u1", secret: "p1"},
		"192.0.2.11:5000": {secret: "tok"},
	}
	if len(creds) != len(want) {
		t.Fatalf("got credentials for %v, want %v", keys(creds), keys(want))
	}
	for h, c := range want {
		if creds[h] != c {
			t.Errorf("%s: got %+v, want %+v", h, creds[h], c)
		}
	}
	all := strings.Join(warnings, "\n")
	for _, w := range []string{"credsStore and credHelpers are not supported", `"192.0.2.12"] holds no credentials`, `"192.0.2.13"].registrytoken`} {
		if !strings.Contains(all, w) {
			t.Errorf("warnings lack %q:\n%s", w, all)
		}
	}

	for _, bad := range []string{
		`{"auths": {"h:1": {"auth": "%%%"}}}`,
		`{"auths": {"h:1": {"auth": "` + b64("nocolon") + `"}}}`,
		`{"auths": {"https://": {"username": "a", "password": "b"}}}`,
		`not json`,
	} {
		_, _, err := parseConfig([]byte(bad))
		if err == nil {
			t.Errorf("parseConfig(%s) succeeded", bad)
		} else if strings.Contains(err.Error(), "nocolon") {
			t.Errorf("error quotes the secret: %v", err)
		}
	}
}

func keys(m map[string]credential) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestNormalizeHost(t *testing.T) {
	for in, want := range map[string]string{
		"https://index.docker.io/v1/": "docker.io",
		"registry-1.docker.io":        "docker.io",
		"docker.io":                   "docker.io",
		"HTTP://192.0.2.1:5000/v2/":   "192.0.2.1:5000",
		"192.0.2.1:5000":              "192.0.2.1:5000",
		" [::1]:5000 ":                "[::1]:5000",
	} {
		if got := normalizeHost(in); got != want {
			t.Errorf("normalizeHost(%q) = %q, want %q", in, got, want)
		}
	}
}

// writeConfig replaces file atomically (as operators should) with a
// config.json holding user:pass for each host.
func writeConfig(t testing.TB, file string, entries map[string][2]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString(`{"auths": {`)
	first := true
	for host, up := range entries {
		if !first {
			b.WriteString(",")
		}
		first = false
		b.WriteString(`"` + host + `": {"auth": "` + b64(up[0]+":"+up[1]) + `"}`)
	}
	b.WriteString("}}")
	writeFile(t, file, b.String())
}

func writeFile(t testing.TB, file, content string) {
	t.Helper()
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

// TestCredentialsReload: the config file is re-read when it changes, a
// removed file means no credentials, a broken one fails until fixed.
func TestCredentialsReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.json")
	if _, err := New(Options{ConfigFile: file}); err == nil {
		t.Fatal("New accepted a missing config file")
	}
	writeConfig(t, file, map[string][2]string{"192.0.2.1:5000": {"alice", "one"}})
	var logs bytes.Buffer
	r, err := New(Options{ConfigFile: file, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	check := func(host, wantUser, wantSecret string) {
		t.Helper()
		u, s, err := r.Credentials(host)
		if err != nil {
			t.Fatal(err)
		}
		if u != wantUser || s != wantSecret {
			t.Fatalf("Credentials(%s) = %q %q, want %q %q", host, u, s, wantUser, wantSecret)
		}
	}
	check("192.0.2.1:5000", "alice", "one")
	check("192.0.2.2:5000", "", "")

	// Rotation: a new file (new inode) is seen at the next call.
	writeConfig(t, file, map[string][2]string{"192.0.2.1:5000": {"alice", "two"}, "192.0.2.2:5000": {"bob", "three"}})
	check("192.0.2.1:5000", "alice", "two")
	check("192.0.2.2:5000", "bob", "three")

	// An in-place rewrite of the same size with a later mtime is seen too.
	writeConfig(t, file, map[string][2]string{"192.0.2.1:5000": {"alice", "six"}, "192.0.2.2:5000": {"bob", "seven"}})
	b, _ := os.ReadFile(file)
	b = bytes.Replace(b, []byte(b64("alice:six")), []byte(b64("alice:ten")), 1)
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(2 * time.Second)
	if err := os.Chtimes(file, later, later); err != nil {
		t.Fatal(err)
	}
	check("192.0.2.1:5000", "alice", "ten")

	// Broken: every call fails, naming the file, until it is fixed.
	writeFile(t, file, `{"auths": `)
	for range 2 {
		_, _, err := r.Credentials("192.0.2.1:5000")
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), file) {
			t.Fatalf("broken config: got %v, want FailedPrecondition naming %s", err, file)
		}
	}
	writeConfig(t, file, map[string][2]string{"192.0.2.1:5000": {"carol", "four"}})
	check("192.0.2.1:5000", "carol", "four")

	// Removed: no credentials, no error.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	check("192.0.2.1:5000", "", "")

	for _, secret := range []string{"one", "two", "three", "four", "ten"} {
		if strings.Contains(logs.String(), "="+secret) || strings.Contains(logs.String(), b64(secret)) {
			t.Errorf("a secret reached the log:\n%s", logs.String())
		}
	}
	if !strings.Contains(logs.String(), "registry config file is gone") {
		t.Errorf("no warning for the removed file:\n%s", logs.String())
	}
}

// TestHostsScheme: loopback and --registry-plain-http hosts are reached
// over HTTP, others over HTTPS; a hosts.toml server wins over both.
func TestHostsScheme(t *testing.T) {
	hostsDir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hostsDir, "192.0.2.30:5000"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hostsDir, "192.0.2.30:5000", "hosts.toml"), []byte("server = \"https://192.0.2.31:5443\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{HostsDir: hostsDir, PlainHTTP: []string{"192.0.2.20:5000", "192.0.2.30:5000"}})
	if err != nil {
		t.Fatal(err)
	}
	hosts := r.Hosts(context.Background())
	for host, want := range map[string]string{
		"127.0.0.1:5000":  "http://127.0.0.1:5000",
		"localhost:5000":  "http://localhost:5000",
		"[::1]:5000":      "http://[::1]:5000",
		"192.0.2.20:5000": "http://192.0.2.20:5000",
		"192.0.2.21:5000": "https://192.0.2.21:5000",
		"192.0.2.30:5000": "https://192.0.2.31:5443",
	} {
		got, err := hosts(host)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Scheme+"://"+got[0].Host != want {
			t.Errorf("%s: got %+v, want one host %s", host, got, want)
		}
		if got[0].Authorizer == nil {
			t.Errorf("%s: no authorizer", host)
		}
	}
	if _, err := New(Options{HostsDir: filepath.Join(hostsDir, "missing")}); err == nil {
		t.Error("New accepted a missing hosts folder")
	}
}
