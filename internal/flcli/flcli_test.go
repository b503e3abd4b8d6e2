package flcli

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestCreateFromFlags(t *testing.T) {
	d, addr := startDaemon(t, nil)
	userData := "#cloud-config\nhostname: web\n"
	metaData := "local_hostname: web\n"
	out, _, err := fl(t, "--insecure", "--address", addr, "--token", "s3cret",
		"microvm", "create", "--name", "web", "--namespace", "team-a", "--vcpu", "4", "--memory", "2048",
		"--kernel-image", "myorg/kernel:6.1", "--kernel-filename", "boot/vmlinux",
		"--cmdline", "console=ttyS0", "--cmdline", "quiet", "--cmdline", "root=PARTUUID=1",
		"--initrd-image", "myorg/initrd:1", "--root-image", "myorg/ubuntu:22.04",
		"--label", "app=web", "--label", "tier=front",
		"--user-data-file", writeFile(t, "ud", userData), "--meta-data-file", writeFile(t, "md", metaData),
		"--interface", "tap:eth0", "--interface", "macvtap:eth1:02:00:00:00:00:01:br0",
		"--provider", "qemu")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.creates) != 1 {
		t.Fatalf("want 1 create, got %d", len(d.creates))
	}
	want := &types.MicroVMSpec{
		Id: "web", Namespace: "team-a", Vcpu: 4, MemoryInMb: 2048,
		Kernel: &types.Kernel{Image: "myorg/kernel:6.1", Filename: proto.String("boot/vmlinux"),
			Cmdline: map[string]string{"console": "ttyS0", "quiet": "", "root": "PARTUUID=1"}},
		Initrd:     &types.Initrd{Image: "myorg/initrd:1"},
		RootVolume: &types.Volume{Id: "root", Source: &types.VolumeSource{ContainerSource: proto.String("myorg/ubuntu:22.04")}},
		Labels:     map[string]string{"app": "web", "tier": "front"},
		Metadata:   map[string]string{"user-data": b64(userData), "meta-data": b64(metaData)},
		Interfaces: []*types.NetworkInterface{
			{DeviceId: "eth0", Type: types.NetworkInterface_TAP},
			{DeviceId: "eth1", Type: types.NetworkInterface_MACVTAP, GuestMac: proto.String("02:00:00:00:00:01"),
				Overrides: &types.NetworkOverrides{BridgeName: proto.String("br0")}},
		},
		Provider: proto.String("qemu"),
	}
	if got := d.creates[0].GetMicrovm(); !proto.Equal(got, want) {
		t.Fatalf("sent spec\n%v\nwant\n%v", got, want)
	}
	// The token travels as Basic base64(token).
	if d.auth[0] != "Basic "+b64("s3cret") {
		t.Fatalf("authorization = %q", d.auth[0])
	}
	// The created VM is printed as a table row with its uid.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !regexp.MustCompile(`^NAMESPACE\s+NAME\s+UID\s+STATE\s+PROVIDER\s+AGE$`).MatchString(lines[0]) {
		t.Fatalf("table:\n%s", out)
	}
	if f := strings.Fields(lines[1]); len(f) != 6 || f[0] != "team-a" || f[1] != "web" || f[2] != "01TESTUID000001" || f[3] != "PENDING" || f[4] != "qemu" {
		t.Fatalf("row %q", lines[1])
	}

	// Creating it again reports the server's AlreadyExists.
	_, _, err = fl(t, "--insecure", "--address", addr, "create", "--name", "web", "--namespace", "team-a")
	if err == nil || !strings.Contains(err.Error(), "AlreadyExists") {
		t.Fatalf("want AlreadyExists, got %v", err)
	}
}

func TestCreateFromSpecFile(t *testing.T) {
	d, addr := startDaemon(t, nil)
	yamlSpec := `
id: db
namespace: team-b
vcpu: 2
memory_in_mb: 512
kernel:
  image: myorg/kernel:6.1
  cmdline:
    console: ttyS0
root_volume:
  id: root
  source:
    container_source: myorg/postgres:16
additionalVolumes:  # lowerCamelCase works too
- id: data
  size_in_mb: 4096
  source:
    container_source: myorg/empty:1
interfaces:
- device_id: eth0
  type: TAP
  address:
    address: 10.0.0.5/24
    gateway: 10.0.0.1
metadata:
  user-data: ` + b64("#cloud-config\n") + `
`
	vendorData := "vendor stuff\n"
	// Flags override the file's fields; metadata files are encoded.
	out, _, err := fl(t, "--insecure", "--address", addr, "create", "-f", writeFile(t, "spec.yaml", yamlSpec),
		"--namespace", "team-c", "--vendor-data-file", writeFile(t, "vd", vendorData), "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	want := &types.MicroVMSpec{
		Id: "db", Namespace: "team-c", Vcpu: 2, MemoryInMb: 512,
		Kernel:     &types.Kernel{Image: "myorg/kernel:6.1", Cmdline: map[string]string{"console": "ttyS0"}},
		RootVolume: &types.Volume{Id: "root", Source: &types.VolumeSource{ContainerSource: proto.String("myorg/postgres:16")}},
		AdditionalVolumes: []*types.Volume{{Id: "data", SizeInMb: proto.Int32(4096),
			Source: &types.VolumeSource{ContainerSource: proto.String("myorg/empty:1")}}},
		Interfaces: []*types.NetworkInterface{{DeviceId: "eth0", Type: types.NetworkInterface_TAP,
			Address: &types.StaticAddress{Address: "10.0.0.5/24", Gateway: proto.String("10.0.0.1")}}},
		Metadata: map[string]string{"user-data": b64("#cloud-config\n"), "vendor-data": b64(vendorData)},
	}
	if got := d.creates[0].GetMicrovm(); !proto.Equal(got, want) {
		t.Fatalf("sent spec\n%v\nwant\n%v", got, want)
	}
	// -o json prints the created VM, which parses back to the stored one.
	var printed types.MicroVM
	if err := protojson.Unmarshal([]byte(out), &printed); err != nil {
		t.Fatalf("output is not a MicroVM: %v\n%s", err, out)
	}
	if uid := printed.GetSpec().GetUid(); !proto.Equal(&printed, d.get(uid)) {
		t.Fatalf("printed %v, stored %v", &printed, d.get(uid))
	}

	// The same spec as JSON, from stdin.
	js, err := yaml.YAMLToJSON([]byte(strings.Replace(yamlSpec, "id: db", "id: db2", 1)))
	if err != nil {
		t.Fatal(err)
	}
	root := newRootCommand(&globals{pollInterval: time.Millisecond})
	root.SetArgs([]string{"--insecure", "--address", addr, "create", "-f", "-"})
	root.SetIn(strings.NewReader(string(js)))
	var sink syncBuffer
	root.SetOut(&sink)
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if got := d.creates[1].GetMicrovm(); got.GetId() != "db2" || got.GetNamespace() != "team-b" || len(got.GetInterfaces()) != 1 {
		t.Fatalf("JSON spec from stdin sent as %v", got)
	}

	// A typo in the file is reported and nothing is sent.
	_, _, err = fl(t, "--insecure", "--address", addr, "create", "-f", writeFile(t, "bad.yaml", "id: x\nvcpus: 2\n"))
	if err == nil || !strings.Contains(err.Error(), "vcpus") {
		t.Fatalf("want an unknown field error, got %v", err)
	}
	if len(d.creates) != 2 {
		t.Fatalf("bad spec was sent")
	}
}

func TestGetAndListOutputs(t *testing.T) {
	d, addr := startDaemon(t, nil)
	web := d.add(&types.MicroVMSpec{Id: "web", Namespace: "b", Labels: map[string]string{"app": "web"}, Vcpu: 2,
		Kernel: &types.Kernel{Image: "k"}, Metadata: map[string]string{"user-data": b64("x")}}, types.MicroVMStatus_CREATED)
	db := d.add(&types.MicroVMSpec{Id: "db", Namespace: "a", Labels: map[string]string{"app": "db"}}, types.MicroVMStatus_FAILED)
	d.mu.Lock()
	d.vms[db].Status.FailureReason = "ImagePullFailed"
	d.mu.Unlock()

	// get -o json and -o yaml parse back to the same VM.
	out, _, err := fl(t, "--insecure", "--address", addr, "microvm", "get", web, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var fromJSON types.MicroVM
	if err := protojson.Unmarshal([]byte(out), &fromJSON); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&fromJSON, d.get(web)) {
		t.Fatalf("json %v != %v", &fromJSON, d.get(web))
	}
	if !strings.Contains(out, `"memory_in_mb": 0`) || !strings.Contains(out, `"state": "CREATED"`) {
		t.Fatalf("json should use proto names and show zero values:\n%s", out)
	}
	out, _, err = fl(t, "--insecure", "--address", addr, "get", web, "-o", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	var fromYAML types.MicroVM
	if err := protojson.Unmarshal(js, &fromYAML); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&fromYAML, d.get(web)) || !strings.Contains(out, "namespace: b\n") {
		t.Fatalf("yaml:\n%s", out)
	}

	// list: a table sorted by namespace then name, FAILED with its reason.
	out, _, err = fl(t, "--insecure", "--address", addr, "microvm", "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("table:\n%s", out)
	}
	header := strings.Fields(lines[0])
	if strings.Join(header, " ") != "NAMESPACE NAME UID STATE PROVIDER AGE" {
		t.Fatalf("header %q", lines[0])
	}
	row1, row2 := strings.Fields(lines[1]), strings.Fields(lines[2])
	if strings.Join(row1[:5], " ") != "a db "+db+" FAILED(ImagePullFailed) qemu" || row1[5] != "90s" {
		t.Fatalf("row 1 %q", lines[1])
	}
	if strings.Join(row2[:5], " ") != "b web "+web+" CREATED qemu" {
		t.Fatalf("row 2 %q", lines[2])
	}
	// Columns line up: each column starts at the same offset in every line.
	for _, col := range []string{"UID", "STATE"} {
		i := strings.Index(lines[0], col)
		for _, l := range lines[1:] {
			if l[i-1] != ' ' || l[i] == ' ' {
				t.Fatalf("column %s misaligned in %q", col, l)
			}
		}
	}

	// Filters reach the server; json is a ListMicroVMsResponse.
	out, _, err = fl(t, "--insecure", "--address", addr, "list", "--namespace", "b", "--name", "web", "-l", "app=web", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	got := d.lists[len(d.lists)-1]
	if got.Namespace != "b" || got.GetName() != "web" || got.Name == nil || got.LabelSelector != "app=web" {
		t.Fatalf("list request %v", got)
	}
	var list v1alpha1.ListMicroVMsResponse
	if err := protojson.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Microvm) != 1 || !proto.Equal(list.Microvm[0], d.get(web)) {
		t.Fatalf("list json %v", &list)
	}
	// Without --name the request carries no name at all.
	if _, _, err := fl(t, "--insecure", "--address", addr, "list"); err != nil {
		t.Fatal(err)
	}
	if d.lists[len(d.lists)-1].Name != nil {
		t.Fatal("name sent without --name")
	}

	// Unknown uid: the server's NotFound text reaches the user.
	_, _, err = fl(t, "--insecure", "--address", addr, "get", "nope")
	if err == nil || !strings.Contains(err.Error(), "NotFound") || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("want NotFound, got %v", err)
	}
	if _, _, err := fl(t, "--insecure", "--address", addr, "get", web, "-o", "xml"); err == nil {
		t.Fatal("-o xml accepted")
	}
}

func TestEnvironment(t *testing.T) {
	d, addr := startDaemon(t, nil)
	uid := d.add(&types.MicroVMSpec{Id: "x"}, types.MicroVMStatus_PENDING)
	t.Setenv(EnvAddress, addr)
	t.Setenv(EnvToken, "from-env")
	out, _, err := fl(t, "--insecure", "get", uid)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, uid) {
		t.Fatalf("output %q", out)
	}
	if d.auth[0] != "Basic "+b64("from-env") {
		t.Fatalf("authorization = %q", d.auth[0])
	}
	// Flags win over the environment.
	if _, _, err := fl(t, "--insecure", "--token", "flag", "get", uid); err != nil {
		t.Fatal(err)
	}
	if d.auth[1] != "Basic "+b64("flag") {
		t.Fatalf("authorization = %q", d.auth[1])
	}
	t.Setenv(EnvToken, "")
	if _, _, err := fl(t, "--insecure", "get", uid); err != nil {
		t.Fatal(err)
	}
	if d.auth[2] != "" {
		t.Fatalf("authorization sent without a token: %q", d.auth[2])
	}
}

func TestWait(t *testing.T) {
	d, addr := startDaemon(t, nil)
	setState := func(s types.MicroVMStatus_MicroVMState, retry int32, reason, msg string) func(*types.MicroVM) bool {
		return func(vm *types.MicroVM) bool {
			vm.Status.State, vm.Status.Retry, vm.Status.FailureReason, vm.Status.FailureMessage = s, retry, reason, msg
			return false
		}
	}

	t.Run("failed", func(t *testing.T) {
		uid := d.add(&types.MicroVMSpec{Id: "bad"}, types.MicroVMStatus_PENDING)
		d.addSteps(uid,
			setState(types.MicroVMStatus_PENDING, 0, "", ""),
			setState(types.MicroVMStatus_PENDING, 1, "ImagePullFailed", "pulling k: not found"),
			setState(types.MicroVMStatus_PENDING, 1, "ImagePullFailed", "pulling k: not found"),
			setState(types.MicroVMStatus_FAILED, 3, "ImagePullFailed", "pulling k: not found"))
		out, _, err := fl(t, "--insecure", "--address", addr, "microvm", "wait", uid)
		if err == nil {
			t.Fatalf("wait succeeded on FAILED:\n%s", out)
		}
		if !strings.Contains(err.Error(), "ImagePullFailed: pulling k: not found") {
			t.Fatalf("error lacks the reason: %v", err)
		}
		// One line per change, not per poll.
		lines := strings.Split(strings.TrimSpace(out), "\n")
		wantEnds := []string{
			"default/bad (" + uid + "): PENDING",
			"default/bad (" + uid + "): PENDING retry 1: pulling k: not found",
			"default/bad (" + uid + "): FAILED(ImagePullFailed)",
		}
		if len(lines) != len(wantEnds) {
			t.Fatalf("progress:\n%s", out)
		}
		for i, w := range wantEnds {
			if !strings.HasSuffix(lines[i], w) {
				t.Fatalf("line %d = %q, want …%q", i, lines[i], w)
			}
		}
	})

	t.Run("created", func(t *testing.T) {
		uid := d.add(&types.MicroVMSpec{Id: "good"}, types.MicroVMStatus_PENDING)
		d.addSteps(uid, setState(types.MicroVMStatus_PENDING, 0, "", ""), setState(types.MicroVMStatus_CREATED, 0, "", ""))
		out, _, err := fl(t, "--insecure", "--address", addr, "wait", uid, "--for", "created")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(strings.TrimSpace(out), "): CREATED") || !strings.Contains(out, "): PENDING\n") {
			t.Fatalf("progress:\n%s", out)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		uid := d.add(&types.MicroVMSpec{Id: "slow"}, types.MicroVMStatus_PENDING)
		start := time.Now()
		_, _, err := fl(t, "--insecure", "--address", addr, "wait", uid, "--timeout", "300ms")
		if err == nil || !strings.Contains(err.Error(), "timed out") || !strings.Contains(err.Error(), "PENDING") {
			t.Fatalf("want a timeout, got %v", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("timeout took %v", time.Since(start))
		}
	})

	t.Run("delete and wait", func(t *testing.T) {
		uid := d.add(&types.MicroVMSpec{Id: "gone"}, types.MicroVMStatus_CREATED)
		d.addSteps(uid, func(*types.MicroVM) bool { return false }, func(*types.MicroVM) bool { return true })
		out, _, err := fl(t, "--insecure", "--address", addr, "microvm", "delete", uid, "--wait")
		if err != nil {
			t.Fatal(err)
		}
		if d.deletes[len(d.deletes)-1] != uid {
			t.Fatalf("deleted %v", d.deletes)
		}
		if !strings.Contains(out, "): DELETING\n") || !strings.HasSuffix(out, uid+": deleted\n") {
			t.Fatalf("progress:\n%s", out)
		}
		// wait --for deleted on a gone VM returns at once.
		if out, _, err := fl(t, "--insecure", "--address", addr, "wait", uid, "--for", "deleted"); err != nil || !strings.Contains(out, "deleted") {
			t.Fatalf("%v %q", err, out)
		}
		// wait --for created on a gone VM is an error.
		if _, _, err := fl(t, "--insecure", "--address", addr, "wait", uid); err == nil {
			t.Fatal("wait for created on a missing VM succeeded")
		}
	})

	t.Run("delete without wait", func(t *testing.T) {
		uid := d.add(&types.MicroVMSpec{Id: "bye"}, types.MicroVMStatus_CREATED)
		if _, _, err := fl(t, "--insecure", "--address", addr, "delete", uid); err != nil {
			t.Fatal(err)
		}
		if d.get(uid).Status.State != types.MicroVMStatus_DELETING {
			t.Fatalf("state %v", d.get(uid).Status.State)
		}
	})
}

func TestConsole(t *testing.T) {
	d, addr := startDaemon(t, nil)
	stateDir := t.TempDir()
	uid := d.add(&types.MicroVMSpec{Id: "web", Namespace: "team-a"}, types.MicroVMStatus_CREATED)
	dir := filepath.Join(stateDir, "vm", "team-a", "web", uid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "console.log")
	first := "[    0.000000] Linux version 6.1\nbusybox init\n"
	if err := os.WriteFile(log, []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}

	out, _, err := fl(t, "--insecure", "--address", addr, "microvm", "console", uid, "--state-dir", stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if out != first {
		t.Fatalf("console printed %q, want %q", out, first)
	}

	t.Run("follow until deleted", func(t *testing.T) {
		var stdout, stderr syncBuffer
		done := make(chan error, 1)
		go func() {
			done <- runFL(context.Background(), &stdout, &stderr, "--insecure", "--address", addr,
				"console", uid, "-f", "--state-dir", stateDir)
		}()
		waitFor(t, func() bool { return stdout.String() == first })
		f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for i := range 3 {
			line := "login: line " + string(rune('1'+i)) + "\n"
			if _, err := f.WriteString(line); err != nil {
				t.Fatal(err)
			}
			want := first
			for j := 0; j <= i; j++ {
				want += "login: line " + string(rune('1'+j)) + "\n"
			}
			waitFor(t, func() bool { return stdout.String() == want })
		}
		select {
		case err := <-done:
			t.Fatalf("follow ended while the VM exists: %v", err)
		default:
		}
		// Deleting the VM ends the follow, successfully, after printing
		// what was written last.
		if _, err := f.WriteString("reboot: Power down\n"); err != nil {
			t.Fatal(err)
		}
		d.remove(uid)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(stdout.String(), "login: line 3\nreboot: Power down\n") {
				t.Fatalf("last output lost: %q", stdout.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("follow did not end after the VM was deleted")
		}
	})

	t.Run("follow waits for the file and stops on cancel", func(t *testing.T) {
		uid := d.add(&types.MicroVMSpec{Id: "late", Namespace: "team-a"}, types.MicroVMStatus_PENDING)
		var stdout, stderr syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			done <- runFL(ctx, &stdout, &stderr, "--insecure", "--address", addr, "console", uid, "-f", "--state-dir", stateDir)
		}()
		time.Sleep(100 * time.Millisecond)
		dir := filepath.Join(stateDir, "vm", "team-a", "late", uid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "console.log"), []byte("hello\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return stdout.String() == "hello\n" })
		// Truncated and rewritten (a restarted VMM): printed from the start.
		if err := os.WriteFile(filepath.Join(dir, "console.log"), []byte("hi\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return stdout.String() == "hello\nhi\n" })
		cancel() // Ctrl-C
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Ctrl-C should end follow cleanly: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("follow did not stop on cancel")
		}
	})

	t.Run("follow ends at --timeout", func(t *testing.T) {
		uid := d.add(&types.MicroVMSpec{Id: "timed", Namespace: "team-a"}, types.MicroVMStatus_CREATED)
		start := time.Now()
		_, _, err := fl(t, "--insecure", "--address", addr, "console", uid, "-f", "--state-dir", stateDir, "--timeout", "300ms")
		if err != nil {
			t.Fatalf("reaching --timeout is a normal end of -f: %v", err)
		}
		if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
			t.Fatalf("follow ran %v with --timeout 300ms", d)
		}
	})

	t.Run("missing log", func(t *testing.T) {
		uid := d.add(&types.MicroVMSpec{Id: "nolog"}, types.MicroVMStatus_PENDING)
		_, _, err := fl(t, "--insecure", "--address", addr, "console", uid, "--state-dir", stateDir)
		if err == nil || !strings.Contains(err.Error(), filepath.Join("vm", "default", "nolog", uid, "console.log")) {
			t.Fatalf("want an error naming the log file, got %v", err)
		}
	})
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConsolePathRejectsTraversal(t *testing.T) {
	for _, spec := range []*types.MicroVMSpec{
		{Id: "..", Namespace: "a", Uid: proto.String("u")},
		{Id: "a/b", Namespace: "a", Uid: proto.String("u")},
		{Id: "a", Namespace: "", Uid: proto.String("u")},
		{Id: "a", Namespace: "a"},
	} {
		if p, err := consolePath("/state", spec); err == nil {
			t.Errorf("%v accepted as %s", spec, p)
		}
	}
	p, err := consolePath("/state", &types.MicroVMSpec{Id: "n", Namespace: "ns", Uid: proto.String("u")})
	if err != nil || p != "/state/vm/ns/n/u/console.log" {
		t.Fatalf("%q %v", p, err)
	}
}

func TestParseInterface(t *testing.T) {
	tests := []struct {
		in                     string
		typ                    types.NetworkInterface_IfaceType
		dev, mac, bridge, fail string
	}{
		{in: "tap:eth0", typ: types.NetworkInterface_TAP, dev: "eth0"},
		{in: "TAP:eth0", typ: types.NetworkInterface_TAP, dev: "eth0"},
		{in: "macvtap:eth1", typ: types.NetworkInterface_MACVTAP, dev: "eth1"},
		{in: "tap:eth0:02:00:00:00:00:01", typ: types.NetworkInterface_TAP, dev: "eth0", mac: "02:00:00:00:00:01"},
		{in: "tap:eth0:02:00:00:00:00:01:br0", typ: types.NetworkInterface_TAP, dev: "eth0", mac: "02:00:00:00:00:01", bridge: "br0"},
		{in: "tap:eth0:02-00-00-00-00-01:br0", typ: types.NetworkInterface_TAP, dev: "eth0", mac: "02-00-00-00-00-01", bridge: "br0"},
		{in: "tap:eth0::br0", typ: types.NetworkInterface_TAP, dev: "eth0", bridge: "br0"},
		{in: "tap:eth0:br0", typ: types.NetworkInterface_TAP, dev: "eth0", bridge: "br0"},
		{in: "eth0", fail: "want type:device"},
		{in: "veth:eth0", fail: "not tap or macvtap"},
		{in: "tap:", fail: "device name is empty"},
		{in: "tap:eth0:nope:br0", fail: "neither mac"},
		{in: "tap:eth0:02:00:00:00:00:01:br:0", fail: "contains ':'"},
	}
	for _, tc := range tests {
		got, err := parseInterface(tc.in)
		if tc.fail != "" {
			if err == nil || !strings.Contains(err.Error(), tc.fail) {
				t.Errorf("%q: want error %q, got %v %v", tc.in, tc.fail, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got.Type != tc.typ || got.DeviceId != tc.dev || got.GetGuestMac() != tc.mac || got.GetOverrides().GetBridgeName() != tc.bridge {
			t.Errorf("%q parsed as %v", tc.in, got)
		}
	}
}
