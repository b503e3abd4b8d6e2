package flcli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild"
	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild/imagebuildtest"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// TestImageBuildKernel runs `fl image build kernel --push` against a
// registry on loopback: it prints the kernel release, the image digest and
// the pushed reference, which the registry then serves.
func TestImageBuildKernel(t *testing.T) {
	cache, err := imagebuildtest.CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	reg := testenv.NewRegistry(t)
	out, errOut, err := fl(t, "image", "build", "kernel", "--cache", cache, "--push", reg.Host+"/lm/kernel:test")
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(l, "\t")
		fields[k] = v
	}
	// The library's own answer for the same cache.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := imagebuild.BuildKernel(ctx, imagebuild.KernelOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	img, err := k.Image()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got := fields["kernel"]; got != k.Release+" ("+k.Package+" "+k.PackageVersion+")" {
		t.Errorf("kernel line %q", got)
	}
	digest := fields["digest"]
	if digest != want.String() || fields["pushed"] != reg.Host+"/lm/kernel@"+digest {
		t.Fatalf("output (want digest %s):\n%s", want, out)
	}
	ref, err := name.ParseReference(reg.Host+"/lm/kernel:test", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != digest {
		t.Errorf("registry has %s under the tag, fl printed %s", desc.Digest, digest)
	}

	// The node image needs the Kubernetes binaries.
	if _, _, err := fl(t, "image", "build", "node", "--cache", cache); err == nil || !strings.Contains(err.Error(), "kube-bin") {
		t.Errorf("node without --kube-bin: %v", err)
	}
}
