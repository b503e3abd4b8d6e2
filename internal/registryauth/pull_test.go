package registryauth

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/liquidmetal-go/liquidmetal/internal/images"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// authRegistry is a real registry on loopback requiring basic auth.
type authRegistry struct {
	host, user, password string
}

// newAuthRegistry starts a registry whose htpasswd file holds one bcrypt
// entry with a random password.
func newAuthRegistry(t testing.TB) authRegistry {
	t.Helper()
	a := authRegistry{user: "flint", password: "pw-" + randomHex(t, 8)}
	a.host = testenv.NewAuthRegistry(t, a.user, a.password).Host
	return a
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*n)
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// push pushes a one-layer image holding data at "payload" as repoTag,
// with the right credentials, and checks that an anonymous push is
// refused (auth really is on).
func (a authRegistry) push(t testing.TB, repoTag string, data []byte) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "payload", Mode: 0o644, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	var image v1.Image
	if image, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(a.host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, image, remote.WithAuth(authn.Anonymous)); err == nil {
		t.Fatal("the registry accepted an anonymous push: auth is off")
	}
	if err := remote.Write(ref, image, remote.WithAuth(&authn.Basic{Username: a.user, Password: a.password})); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// puller is images.Service on a private containerd, pulling through a
// Registries.
type puller struct {
	svc *images.Service
}

func newPuller(t testing.TB, opts Options) puller {
	t.Helper()
	ctd := testenv.NewContainerd(t)
	c, err := client.New(ctd.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	log := slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Logger = log
	regs, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return puller{svc: images.New(c, images.Options{Resolver: regs.Resolver, TempDir: t.TempDir(), Logger: log})}
}

// pull pulls ref under a lease of its own (deleted at the end of the
// test) and, when want is not nil, checks the image's payload.
func (p puller) pull(t testing.TB, ref string, want []byte) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	uid := "vm-" + randomHex(t, 4)
	lctx, err := p.svc.EnsureLease(ctx, uid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.svc.DeleteLease(context.Background(), uid); err != nil {
			t.Errorf("delete lease: %v", err)
		}
	})
	img, err := p.svc.Pull(lctx, ref)
	if err != nil {
		return err
	}
	if want != nil {
		dst := filepath.Join(t.TempDir(), "payload")
		if err := p.svc.CopyFile(lctx, uid, img, "payload", dst); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("pulled payload differs from the pushed one (%d vs %d bytes)", len(got), len(want))
		}
	}
	return nil
}

// wantUnauthenticated checks a refused pull: Unauthenticated, naming the
// reference, the registry host and 401, and never the password.
func wantUnauthenticated(t testing.TB, err error, ref, host, password string) {
	t.Helper()
	if err == nil {
		t.Fatalf("pull of %s succeeded, want a refusal", ref)
	}
	msg := err.Error()
	t.Logf("refused as wanted: %v", err)
	if !errdefs.IsUnauthorized(err) {
		t.Errorf("error is not errdefs.ErrUnauthenticated: %v", err)
	}
	for _, s := range []string{ref, "registry " + host, "401"} {
		if !strings.Contains(msg, s) {
			t.Errorf("error does not name %q: %s", s, msg)
		}
	}
	if password != "" && strings.Contains(msg, password) {
		t.Errorf("error quotes the password: %s", msg)
	}
}

// TestPullWithCredentials: against a registry with htpasswd auth, a pull
// without credentials and one with a wrong password fail with
// ErrUnauthenticated naming the registry and 401; after the operator
// rotates config.json to the right password, the same daemon pulls.
func TestPullWithCredentials(t *testing.T) {
	reg := newAuthRegistry(t)
	data := []byte("payload-" + randomHex(t, 32))
	reg.push(t, "private/app:1", data)
	ref := reg.host + "/private/app:1"

	t.Run("no credentials", func(t *testing.T) {
		p := newPuller(t, Options{})
		wantUnauthenticated(t, p.pull(t, ref, nil), ref, reg.host, "")
	})

	file := filepath.Join(t.TempDir(), "config.json")
	wrong := "wrong-" + randomHex(t, 8)
	writeConfig(t, file, map[string][2]string{reg.host: {reg.user, wrong}})
	p := newPuller(t, Options{ConfigFile: file})
	wantUnauthenticated(t, p.pull(t, ref, nil), ref, reg.host, wrong)

	// Credentials for another host are not sent to this one.
	writeConfig(t, file, map[string][2]string{"192.0.2.1:5000": {reg.user, reg.password}})
	wantUnauthenticated(t, p.pull(t, ref, nil), ref, reg.host, reg.password)

	// Rotation: the next pull reads the new file.
	writeConfig(t, file, map[string][2]string{"http://" + reg.host + "/v2/": {reg.user, reg.password}})
	if err := p.pull(t, ref, data); err != nil {
		t.Fatalf("pull with the right credentials: %v", err)
	}
}

// closedLoopbackHost returns a loopback "host:port" nothing listens on.
func closedLoopbackHost(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	return host
}

func writeHostsToml(t testing.TB, hostsDir, host, content string) {
	t.Helper()
	dir := filepath.Join(hostsDir, host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "hosts.toml"), content)
}

// TestMirror: a hosts.toml sends pulls of an unreachable upstream to a
// mirror (the authenticated registry), with the mirror's own credentials.
func TestMirror(t *testing.T) {
	reg := newAuthRegistry(t)
	data := []byte("mirrored-" + randomHex(t, 32))
	reg.push(t, "mirrored/app:1", data)
	upstream := closedLoopbackHost(t)
	ref := upstream + "/mirrored/app:1"

	hostsDir := t.TempDir()
	// containerd's folder name for "host:port" is "host_port_".
	writeHostsToml(t, hostsDir, strings.Replace(upstream, ":", "_", 1)+"_", `server = "http://`+upstream+`"

[host."http://`+reg.host+`"]
  capabilities = ["pull", "resolve"]
`)
	file := filepath.Join(t.TempDir(), "config.json")
	// Credentials under the upstream's name are not the mirror's.
	writeConfig(t, file, map[string][2]string{upstream: {reg.user, reg.password}})
	p := newPuller(t, Options{ConfigFile: file, HostsDir: hostsDir})
	wantUnauthenticated(t, p.pull(t, ref, nil), ref, reg.host, reg.password)

	writeConfig(t, file, map[string][2]string{reg.host: {reg.user, reg.password}})
	if err := p.pull(t, ref, data); err != nil {
		t.Fatalf("pull through the mirror: %v", err)
	}
}

// TestTLSHostsToml: a registry behind TLS with client certificates is
// reached with hosts.toml's ca and client (or skip_verify), re-read at
// every pull; without them the pull fails on the TLS handshake.
func TestTLSHostsToml(t *testing.T) {
	reg := newAuthRegistry(t)
	data := []byte("tls-" + randomHex(t, 32))
	reg.push(t, "tls/app:1", data)
	reg.push(t, "tls/app:2", data)

	dir := t.TempDir()
	clientCert, clientKey, clientPool := clientCertificate(t, dir)
	target, err := url.Parse("http://" + reg.host)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientPool}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "https://")
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}

	hostsDir := t.TempDir()
	file := filepath.Join(t.TempDir(), "config.json")
	writeConfig(t, file, map[string][2]string{host: {reg.user, reg.password}})
	p := newPuller(t, Options{ConfigFile: file, HostsDir: hostsDir})
	server := `server = "https://` + host + `"` + "\n"
	client := `client = [["` + clientCert + `", "` + clientKey + `"]]` + "\n"

	steps := []struct {
		name, toml, tag, wantErr string
	}{
		{"unknown CA", server + client, "1", "certificate signed by unknown authority"},
		{"no client certificate", server + `ca = "` + ca + `"` + "\n", "1", "certificate required"},
		{"ca and client", server + `ca = "ca.pem"` + "\n" + client, "1", ""},
		{"skip_verify and client", server + "skip_verify = true\n" + client, "2", ""},
	}
	for _, s := range steps {
		// ca.pem relative to the host's folder: copy it there.
		writeHostsToml(t, hostsDir, host, s.toml)
		if b, err := os.ReadFile(ca); err == nil {
			_ = os.WriteFile(filepath.Join(hostsDir, host, "ca.pem"), b, 0o644)
		}
		err := p.pull(t, host+"/tls/app:"+s.tag, data)
		switch {
		case s.wantErr == "" && err != nil:
			t.Errorf("%s: %v", s.name, err)
		case s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr)):
			t.Errorf("%s: got %v, want an error with %q", s.name, err, s.wantErr)
		case err != nil:
			t.Logf("%s: refused as wanted: %v", s.name, err)
		}
	}
}

// clientCertificate writes a self-signed client certificate and its key
// under dir and returns their paths and a pool trusting it.
func clientCertificate(t testing.TB, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "flintlockd-test-client"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// testLog sends log lines to the test's log.
type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
