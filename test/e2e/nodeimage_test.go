package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	v1alpha1 "github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild"
	"github.com/liquidmetal-go/liquidmetal/internal/imagebuild/imagebuildtest"
	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
	"github.com/liquidmetal-go/liquidmetal/internal/testimages"
)

// nodeBootTimeout bounds a full systemd + cloud-init boot of the node OS
// image under TCG (guest code runs about 20 times slower than the host).
const nodeBootTimeout = 10 * time.Minute

// TestNodeImageBoots: the kernel and node OS images built by
// internal/imagebuild, pushed to the registry, boot through flintlockd
// under QEMU TCG with the project's initrd: systemd (the root image's
// /sbin/init) reaches multi-user.target, cloud-init reads flintlockd's
// NoCloud disk and runs the user's cloud-config to its final "finished"
// line, and the node is ready for kubeadm (its preflight checks pass).
// Deleting the VM leaves nothing behind.
func TestNodeImageBoots(t *testing.T) {
	buildCtx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	// The initrd loads its own copy of the modules of one kernel: the
	// kernel image must be built from that same package.
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	guest, err := testimages.Build(buildCtx, filepath.Join(root, "bin", "cache", "guest"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	kernel, node, err := imagebuildtest.Images(buildCtx, "linux-image-"+guest.KernelVersion)
	if err != nil {
		t.Fatal(err)
	}
	if kernel.Release != guest.KernelVersion {
		t.Fatalf("kernel image of %s, initrd of %s", kernel.Release, guest.KernelVersion)
	}
	t.Logf("kernel and node images ready in %v (kubernetes %s, kernel %s)", time.Since(start).Round(time.Millisecond), node.KubernetesVersion, kernel.Release)

	start = time.Now()
	kimg, err := kernel.Image()
	if err != nil {
		t.Fatal(err)
	}
	nimg, err := node.Image()
	if err != nil {
		t.Fatal(err)
	}
	kernelRef := env.Registry.Host + "/liquidmetal/node-kernel:" + kernel.Release
	nodeRef := env.Registry.Host + "/liquidmetal/node:" + node.KubernetesVersion
	if _, err := imagebuild.Push(buildCtx, kimg, kernelRef, imagebuild.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := imagebuild.Push(buildCtx, nimg, nodeRef, imagebuild.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("pushed %s and %s in %v", kernelRef, nodeRef, time.Since(start).Round(time.Millisecond))

	d := startDaemon(t)
	host := fmt.Sprintf("lm-node-%d", time.Now().UnixNano()%1e6)
	spec := &types.MicroVMSpec{
		Id:         "node",
		Namespace:  "e2e-nodeimage",
		Vcpu:       2,
		MemoryInMb: 2048,
		Kernel: &types.Kernel{
			Image: kernelRef, // QEMU boots its boot/vmlinuz
			// systemd stops printing status lines on the console once the
			// serial getty holds it, which under TCG often comes before
			// multi-user.target: have PID 1 log its own lines ("Reached
			// target ...") through the kernel log, which reaches the
			// console regardless (without the kernel's rate limit).
			Cmdline: map[string]string{"systemd.log_target": "kmsg", "printk.devkmsg": "on"},
		},
		Initrd:     &types.Initrd{Image: env.Images.Initrd},
		RootVolume: &types.Volume{Id: "root", SizeInMb: proto.Int32(3072), Source: &types.VolumeSource{ContainerSource: &nodeRef}},
		Metadata: map[string]string{
			"meta-data": nodeB64("instance-id: " + host + "\nlocal-hostname: " + host + "\n"),
			"user-data": nodeB64(nodeCheckConfig(node.KubernetesVersion)),
		},
	}
	ctx := context.Background()
	resp, err := d.Client.CreateMicroVM(ctx, &v1alpha1.CreateMicroVMRequest{Microvm: spec})
	if err != nil {
		t.Fatal(err)
	}
	uid := resp.GetMicrovm().GetSpec().GetUid()
	start = time.Now()
	vm := d.waitState(uid, types.MicroVMStatus_CREATED, 5*time.Minute)
	t.Logf("VM created (pull, 3 GiB root volume, VMM started) in %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	console := filepath.Join(d.vmDir(vm), "console.log")
	multiUser := regexp.MustCompile(`systemd\[1\]: Reached target multi-user\.target`)
	finished := regexp.MustCompile(`Cloud-init v\. \S+ finished at .*Datasource DataSourceNoCloud`)
	check := regexp.MustCompile(`NODECHECK (.*)`)
	log := waitNodeConsole(t, console, nodeBootTimeout, multiUser)
	t.Logf("systemd reached multi-user.target %v after the VMM started", time.Since(start).Round(time.Second))
	log = waitNodeConsole(t, console, nodeBootTimeout, finished, check)
	t.Logf("cloud-init finished %v after the VMM started", time.Since(start).Round(time.Second))

	// The checks the user-data ran in the guest, against what the host
	// built and asked for.
	got := map[string]string{}
	for _, kv := range strings.Fields(check.FindStringSubmatch(log)[1]) {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
	}
	want := map[string]string{
		"host":      host,                   // cloud-init applied the NoCloud meta-data
		"release":   kernel.Release,         // the kernel image's kernel runs
		"kubeadm":   node.KubernetesVersion, // the node layer's binaries
		"kubelet":   node.KubernetesVersion,
		"kubectl":   node.KubernetesVersion,
		"init":      "systemd",   // the root image's /sbin/init is PID 1
		"multiuser": "active",    // as systemd itself tells
		"failed":    "none",      // no unit failed
		"runtime":   "active",    // containerd
		"enabled":   "enabled",   // kubelet is enabled for kubeadm ...
		"condition": "no",        // ... and waits for kubeadm's configuration
		"forward":   "1",         // sysctl.d
		"bridgenf":  "1",         // br_netfilter from the modules layer + sysctl.d
		"overlay":   "1",         // modules-load.d
		"cgroup":    "cgroup2fs", // the unified hierarchy kubelet expects
		"preflight": "0",         // kubeadm init's preflight checks pass
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("guest check %s=%q, want %q", k, got[k], v)
		}
	}
	// The 3 GiB root volume, less the file system's own overhead: room
	// for containerd's images.
	if mb, err := strconv.Atoi(got["rootmb"]); err != nil || mb < 2800 || mb > 3072 {
		t.Errorf("guest root file system of %q MiB, want about 3 GiB", got["rootmb"])
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(got["machineid"]) {
		t.Errorf("guest machine id %q: want one made at first boot", got["machineid"])
	}
	// kubeadm's warnings are expected (no network to pull images from);
	// cloud-init's would mean the image configures it badly.
	cloudInitWarning := regexp.MustCompile(`cloud-init\[\d+\]: .*\[WARNING\]`)
	for _, l := range strings.Split(log, "\n") {
		if cloudInitWarning.MatchString(l) {
			t.Errorf("cloud-init warned: %s", strings.TrimSpace(l))
		}
		if strings.Contains(l, "WARNING") || strings.Contains(l, "[preflight]") {
			t.Logf("guest: %.160s", strings.TrimSpace(l))
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", tail(log, 120))
	}

	if _, err := d.Client.DeleteMicroVM(ctx, &v1alpha1.DeleteMicroVMRequest{Uid: uid}); err != nil {
		t.Fatal(err)
	}
	d.waitGone(uid, 2*time.Minute)
	d.assertNothingLeft(vm)
}

// nodeCheckConfig is a cloud-config whose runcmd prints, on one console
// line, what the guest sees of the things the node image promises. The
// test VM has no network: a dummy interface with a default route stands
// in for one (kubeadm picks its address from it), and the image pulls of
// kubeadm's preflight phase are skipped.
func nodeCheckConfig(kubeVersion string) string {
	return `#cloud-config
runcmd:
  - |
    ip link add lm0 type dummy && ip link set lm0 up && ip addr add 10.200.0.2/24 dev lm0 &&
      ip route add default via 10.200.0.1 dev lm0
    cat >/run/kubeadm.yaml <<EOF
    apiVersion: kubeadm.k8s.io/v1beta4
    kind: ClusterConfiguration
    kubernetesVersion: ` + kubeVersion + `
    EOF
    kubeadm init phase preflight --config /run/kubeadm.yaml --ignore-preflight-errors=ImagePull >/dev/console 2>&1
    preflight=$?
    failed=$(systemctl --failed --plain --no-legend | cut -d' ' -f1 | paste -sd, -)
    echo "NODECHECK host=$(hostname) release=$(uname -r) init=$(cat /proc/1/comm)` +
		` multiuser=$(systemctl is-active multi-user.target) failed=${failed:-none}` +
		` kubeadm=$(kubeadm version -o short) kubelet=$(kubelet --version | cut -d' ' -f2)` +
		` kubectl=$(kubectl version --client | sed -n 's/^Client Version: //p')` +
		` runtime=$(systemctl is-active containerd) enabled=$(systemctl is-enabled kubelet)` +
		` condition=$(systemctl show -P ConditionResult kubelet)` +
		` forward=$(cat /proc/sys/net/ipv4/ip_forward) bridgenf=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables)` +
		` overlay=$(test -d /sys/module/overlay && echo 1) cgroup=$(stat -fc %T /sys/fs/cgroup)` +
		` rootmb=$(df -Pm / | awk 'NR == 2 { print $2 }') machineid=$(cat /etc/machine-id) preflight=$preflight" >/dev/console
`
}

func nodeB64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// consoleEscapes match the terminal escapes systemd colours its status lines with.
var consoleEscapes = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// waitNodeConsole waits until the console log (escapes and carriage
// returns removed) matches every pattern, and returns it.
func waitNodeConsole(t *testing.T, path string, timeout time.Duration, want ...*regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		log := strings.ReplaceAll(consoleEscapes.ReplaceAllString(string(b), ""), "\r", "")
		var missing *regexp.Regexp
		for _, re := range want {
			if !re.MatchString(log) {
				missing = re
				break
			}
		}
		if missing == nil {
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("console has no %q after %v:\n%s", missing, timeout, tail(log, 120))
		}
		time.Sleep(time.Second)
	}
}
