package imagebuild_test

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild"
	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild/imagebuildtest"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// TestPushWithDockerConfig pushes the kernel image to a registry that
// requires authentication: with the credentials in a docker config.json
// ($DOCKER_CONFIG, as authn.DefaultKeychain reads it) the push succeeds
// and the registry serves the image by the returned digest; with wrong
// ones it fails with the registry's 401.
func TestPushWithDockerConfig(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cache, err := imagebuildtest.CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	k, err := imagebuild.BuildKernel(ctx, imagebuild.KernelOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	img, err := k.Image()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	user, password := "builder", "pw-"+time.Now().Format("150405.000000")
	reg := testenv.NewAuthRegistry(t, user, password)
	ref := reg.Host + "/liquidmetal/kernel:" + k.Release

	dockerConfig := func(pw string) {
		cfg := filepath.Join(dir, "docker-"+pw)
		if err := os.MkdirAll(cfg, 0o700); err != nil {
			t.Fatal(err)
		}
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pw))
		b, _ := json.Marshal(map[string]any{"auths": map[string]any{reg.Host: map[string]string{"auth": auth}}})
		if err := os.WriteFile(filepath.Join(cfg, "config.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("DOCKER_CONFIG", cfg)
	}

	dockerConfig("wrong")
	_, err = imagebuild.Push(ctx, img, ref, imagebuild.PushOptions{})
	if err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(strings.ToUpper(err.Error()), "UNAUTHORIZED") {
		t.Fatalf("push with a wrong password: %v, want the registry's 401", err)
	}

	dockerConfig(password)
	pushed, err := imagebuild.Push(ctx, img, ref, imagebuild.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if pushed != reg.Host+"/liquidmetal/kernel@"+want.String() {
		t.Errorf("Push returned %q, want the repository at digest %s", pushed, want)
	}
	r, err := name.ParseReference(pushed, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		t.Fatalf("the registry does not serve %s: %v", pushed, err)
	}
	if desc.Digest != want {
		t.Errorf("registry serves %s, pushed %s", desc.Digest, want)
	}
	// A bad reference is the caller's error.
	if _, err := imagebuild.Push(ctx, img, "Not A Reference", imagebuild.PushOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad reference: %v, want invalid argument", err)
	}
}

// TestNodeImage builds the node OS image for real (debootstrap and the
// Kubernetes binaries: minutes when the shared cache is cold, seconds
// when warm) and checks the layers against the layout contract: what the
// root filesystem holds and leaves out, that the Kubernetes layer never
// replaces a link of the merged-/usr root, and the image's order and labels.
func TestNodeImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root (debootstrap)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	k, n, err := imagebuildtest.Images(ctx, imagebuild.DefaultKernelPackage)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := imagebuildtest.KubeBinDir(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := imagebuild.KubeVersion(ctx, kube); err != nil || v != n.KubernetesVersion {
		t.Errorf("KubeVersion = %q, %v; the image says %q", v, err, n.KubernetesVersion)
	}
	for _, p := range imagebuild.BasePackages {
		if n.Packages[p] == "" {
			t.Errorf("package %s is not installed", p)
		}
	}

	// The root filesystem layer.
	base := readLayer(t, n.Base.File, func(name string) bool {
		return name == "etc/machine-id" || name == "etc/resolv.conf"
	})
	symlinks := map[string]string{}
	for name, h := range base.headers {
		if h.Typeflag == tar.TypeSymlink {
			symlinks[strings.TrimSuffix(name, "/")] = h.Linkname
		}
		switch {
		case strings.HasPrefix(name, "dev/") && name != "dev/",
			strings.HasPrefix(name, "run/") && name != "run/",
			strings.HasPrefix(name, "etc/ssh/ssh_host_"),
			strings.HasPrefix(name, "var/lib/apt/lists/") && strings.HasSuffix(name, "_Packages"):
			t.Errorf("root filesystem holds %s: it belongs to the build host or to one boot", name)
		}
	}
	for _, l := range []string{"bin", "sbin", "lib"} {
		if symlinks[l] != "usr/"+l {
			t.Errorf("/%s links to %q, want usr/%s (merged /usr)", l, symlinks[l], l)
		}
	}
	if symlinks["usr/sbin/init"] != "/lib/systemd/systemd" {
		t.Errorf("/sbin/init links to %q, want systemd", symlinks["usr/sbin/init"])
	}
	for _, f := range []string{"usr/bin/cloud-init", "usr/bin/containerd", "usr/sbin/runc", "usr/sbin/sshd", "usr/sbin/ifup", "usr/bin/python3.11"} {
		if base.headers[f] == nil {
			t.Errorf("root filesystem has no %s", f)
		}
	}
	if b, ok := base.data["etc/machine-id"]; !ok || len(b) != 0 {
		t.Errorf("etc/machine-id = %q, want an empty file (a new id per VM)", b)
	}

	// The Kubernetes layer: stacked on the root filesystem, no folder of it
	// may be a link there (an applier would replace the link).
	node := readLayer(t, n.Layer.File, func(name string) bool {
		return strings.HasPrefix(name, "etc/") || strings.HasPrefix(name, "usr/lib/systemd/")
	})
	modules := readLayer(t, k.Modules.File, func(string) bool { return false })
	for _, layer := range []layerContent{node, modules} {
		for name, h := range layer.headers {
			if h.Typeflag == tar.TypeDir {
				if target, ok := symlinks[strings.TrimSuffix(name, "/")]; ok {
					t.Errorf("layer folder %s would replace the root filesystem's link to %s", name, target)
				}
			}
		}
	}
	for _, b := range []string{"kubelet", "kubeadm", "kubectl"} {
		h := node.headers["usr/bin/"+b]
		if h == nil || h.Mode != 0o755 || h.Size < 1<<20 {
			t.Errorf("usr/bin/%s: %+v, want an executable", b, h)
		}
	}
	contains := func(file string, want ...string) {
		t.Helper()
		got := string(node.data[file])
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s lacks %q:\n%s", file, w, got)
			}
		}
	}
	contains("usr/lib/systemd/system/kubelet.service", "ExecStart=/usr/bin/kubelet", "ConditionPathExists=/var/lib/kubelet/config.yaml", "WantedBy=multi-user.target")
	contains("usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf", "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env", "--config=/var/lib/kubelet/config.yaml", "$KUBELET_EXTRA_ARGS")
	contains("etc/containerd/config.toml", "SystemdCgroup = true", `sandbox_image = "`, `/pause:`, `bin_dir = "/opt/cni/bin"`)
	contains("etc/cloud/cloud.cfg.d/90_liquidmetal.cfg", "datasource_list: [NoCloud, None]")
	contains("etc/modules-load.d/kubernetes.conf", "overlay", "br_netfilter")
	contains("etc/sysctl.d/90-kubernetes.conf", "net.ipv4.ip_forward = 1", "net.bridge.bridge-nf-call-iptables = 1")
	if h := node.headers["etc/systemd/system/multi-user.target.wants/kubelet.service"]; h == nil || h.Linkname != "/usr/lib/systemd/system/kubelet.service" {
		t.Errorf("kubelet is not enabled: %+v", h)
	}
	if h := node.headers["etc/systemd/system/apt-daily.timer"]; h == nil || h.Linkname != "/dev/null" {
		t.Errorf("apt-daily.timer is not masked: %+v", h)
	}

	// The image: root filesystem, the kernel's modules (the very layer of
	// the kernel image), the Kubernetes layer; labels name the versions.
	img, err := n.Image()
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range m.Layers {
		got = append(got, l.Digest.String())
	}
	if want := []string{n.Base.Digest.String(), k.Modules.Digest.String(), n.Layer.Digest.String()}; !slices.Equal(got, want) {
		t.Errorf("layers %v, want %v", got, want)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	labels := cf.Config.Labels
	if labels[imagebuild.LabelKind] != imagebuild.KindNode || labels[imagebuild.LabelKubernetesVersion] != n.KubernetesVersion ||
		labels[imagebuild.LabelKernelRelease] != k.Release || labels[imagebuild.LabelPackagePrefix+"containerd"] != n.Packages["containerd"] ||
		labels[imagebuild.LabelPackagePrefix+"cloud-init"] == "" {
		t.Errorf("labels %v", labels)
	}

	// Warm: the same image again, from the cache.
	start := time.Now()
	_, n2, err := imagebuildtest.Images(ctx, imagebuild.DefaultKernelPackage)
	if err != nil {
		t.Fatal(err)
	}
	img2, err := n2.Image()
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("warm build gives %s, first %s", d2, d1)
	}
	t.Logf("warm node image build: %v; image %s", time.Since(start).Round(time.Millisecond), d1)
}

type layerContent struct {
	headers map[string]*tar.Header
	data    map[string][]byte
}

// readLayer lists a gzip'd tar layer, keeping the content of the regular
// files keep selects.
func readLayer(t *testing.T, file string, keep func(string) bool) layerContent {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	c := layerContent{headers: map[string]*tar.Header{}, data: map[string][]byte{}}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return c
		}
		if err != nil {
			t.Fatal(err)
		}
		c.headers[h.Name] = h
		if h.Typeflag == tar.TypeReg && keep(h.Name) {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			c.data[h.Name] = b
		}
	}
}
