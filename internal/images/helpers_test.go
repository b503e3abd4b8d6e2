package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/sys/mountinfo"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// env is a private containerd, a real registry behind a request-counting
// proxy, and a Service on them.
type env struct {
	ctd    *testenv.Containerd
	client *client.Client
	svc    *Service
	// reg is the registry itself (for pushes); host is the counting proxy
	// in front of it (for pulls).
	reg      string
	host     string
	requests atomic.Int64
}

func newEnv(t testing.TB, opts Options, ctdOpts ...testenv.ContainerdOption) *env {
	t.Helper()
	e := &env{ctd: testenv.NewContainerd(t, ctdOpts...)}
	reg := testenv.NewRegistry(t)
	e.reg = reg.Host
	target, err := url.Parse("http://" + reg.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.requests.Add(1)
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.host = strings.TrimPrefix(srv.URL, "http://")

	e.client, err = client.New(e.ctd.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.client.Close() })
	if opts.TempDir == "" {
		opts.TempDir = t.TempDir()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testLog{t}, nil))
	}
	e.svc = New(e.client, opts)
	return e
}

func (e *env) ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return e.svc.withNamespace(ctx)
}

// file is one entry of a test image layer: a regular file unless link is
// set (a symbolic link).
type file struct {
	path string
	data []byte
	link string
	mode int64
}

// layerTar makes an uncompressed layer tarball, with parent folders.
func layerTar(t testing.TB, files []file) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	var mkdirs func(d string)
	mkdirs = func(d string) {
		if d == "." || d == "/" || d == "" || dirs[d] {
			return
		}
		mkdirs(path.Dir(d))
		dirs[d] = true
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		mkdirs(path.Dir(f.path))
		mode := f.mode
		if mode == 0 {
			mode = 0o644
		}
		if f.link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: f.path, Linkname: f.link, Mode: 0o777}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.path, Mode: mode, Size: int64(len(f.data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// push builds an image of the given layers (bottom first) for this host's
// platform, pushes it to the registry as repo:tag and returns the reference
// to pull it through the counting proxy.
func (e *env) push(t testing.TB, repoTag string, layers ...[]file) string {
	t.Helper()
	var img v1.Image = empty.Image
	for _, files := range layers {
		b := layerTar(t, files)
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		img, err = mutate.AppendLayers(img, l)
		if err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(e.reg+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return e.host + "/" + repoTag
}

// testLog sends log lines to the test's log.
type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Helper()
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// contentDigests lists every blob in the service's namespace.
func (e *env) contentDigests(t testing.TB) []string {
	t.Helper()
	var out []string
	err := e.client.ContentStore().Walk(e.ctx(t), func(info content.Info) error {
		out = append(out, info.Digest.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// snapshotKeys lists every snapshot in the service's namespace.
func (e *env) snapshotKeys(t testing.TB) []string {
	t.Helper()
	sn, err := e.svc.Snapshotter(e.ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	err = e.client.SnapshotService(sn).Walk(e.ctx(t), func(_ context.Context, info snapshots.Info) error {
		out = append(out, info.Name)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// ingests lists unfinished content writes in the namespace.
func (e *env) ingests(t testing.TB) []string {
	t.Helper()
	st, err := e.client.ContentStore().ListStatuses(e.ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range st {
		out = append(out, s.Ref)
	}
	return out
}

// mountsUnder lists mount points at or under dir in this process's mount
// table.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range infos {
		out = append(out, m.Mountpoint)
	}
	return out
}
