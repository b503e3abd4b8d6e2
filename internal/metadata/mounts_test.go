package metadata

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"sigs.k8s.io/yaml"
)

var dataMount = []Mount{{Device: "/dev/vdb", MountPoint: "/data"}}

const wantEntry = `- ["/dev/vdb","/data","auto","defaults,nofail","0","2"]`

func TestWithMountsNone(t *testing.T) {
	got, err := WithMounts(nil, dataMount)
	if err != nil {
		t.Fatal(err)
	}
	if want := "#cloud-config\nmounts:\n" + wantEntry + "\n"; string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	same, err := WithMounts([]byte("#!/bin/sh\n"), nil)
	if err != nil || string(same) != "#!/bin/sh\n" {
		t.Fatalf("no mounts changed vendor-data: %q %v", same, err)
	}
}

// A caller's #cloud-config keeps its keys and its own mounts, first.
func TestWithMountsMergesCloudConfig(t *testing.T) {
	in := "#cloud-config\nruncmd:\n- echo hi\nmounts:\n- [ sdc, /mnt/c ]\nwrite_files:\n- path: /x\n  content: y\n"
	got, err := WithMounts([]byte(in), dataMount)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(got), "#cloud-config\n") {
		t.Fatalf("header lost: %q", got)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(got, &doc); err != nil {
		t.Fatal(err)
	}
	if doc["runcmd"] == nil || doc["write_files"] == nil {
		t.Fatalf("keys lost: %v", doc)
	}
	mounts, _ := doc["mounts"].([]any)
	if len(mounts) != 2 {
		t.Fatalf("mounts %v", doc["mounts"])
	}
	first, _ := mounts[0].([]any)
	second, _ := mounts[1].([]any)
	if len(first) != 2 || first[0] != "sdc" || len(second) != 6 || second[1] != "/data" {
		t.Fatalf("mounts %v", mounts)
	}
	if !strings.Contains(string(got), wantEntry) {
		t.Fatalf("entry not in flow style: %q", got)
	}
	if _, err := WithMounts([]byte("#cloud-config\nmounts: 3\n"), dataMount); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("mounts not a list: %v", err)
	}
}

func parts(t *testing.T, doc []byte) map[string][]byte {
	t.Helper()
	i := bytes.Index(doc, []byte("\r\n\r\n"))
	if i < 0 {
		t.Fatalf("no headers: %q", doc)
	}
	hdr := string(doc[:i])
	_, params, err := mime.ParseMediaType(strings.TrimPrefix(strings.SplitN(hdr, "\r\n", 2)[0], "Content-Type: "))
	if err != nil {
		t.Fatal(err)
	}
	r := multipart.NewReader(bytes.NewReader(doc[i+4:]), params["boundary"])
	out := map[string][]byte{}
	for {
		p, err := r.NextPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		out[p.Header.Get("Content-Type")] = b
	}
}

// A script becomes one part of a multipart, next to the mounts part.
func TestWithMountsScript(t *testing.T) {
	script := "#!/bin/sh\necho vendor\n"
	got, err := WithMounts([]byte(script), dataMount)
	if err != nil {
		t.Fatal(err)
	}
	ps := parts(t, got)
	if string(ps[`text/plain; charset="utf-8"`]) != script {
		t.Fatalf("script part: %q", ps)
	}
	if !strings.Contains(string(ps[`text/cloud-config; charset="utf-8"`]), wantEntry) {
		t.Fatalf("mounts part: %q", ps)
	}
	// Merging into the multipart again keeps both parts and adds one.
	again, err := WithMounts(got, []Mount{{Device: "/dev/vdc", MountPoint: "/logs"}})
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(again), "Content-Disposition"); n != 3 {
		t.Fatalf("%d parts after a second merge: %q", n, again)
	}
	if !strings.Contains(string(again), script) || !strings.Contains(string(again), `"/logs"`) {
		t.Fatalf("second merge: %q", again)
	}
}
