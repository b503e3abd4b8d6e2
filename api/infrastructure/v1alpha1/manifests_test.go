package v1alpha1_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// manifest is a testdata file and the kind it holds.
type manifest struct {
	file string
	kind string
}

// manifests are the valid testdata manifests: the seed's MicrovmCluster,
// copied unchanged, and manifests using every field of each kind.
var manifests = []manifest{
	{"microvmcluster-seed.yaml", "MicrovmCluster"},
	{"microvmcluster-full.yaml", "MicrovmCluster"},
	{"microvmcluster-dynamic.yaml", "MicrovmCluster"},
	{"microvmmachine-full.yaml", "MicrovmMachine"},
	{"microvmmachinetemplate-full.yaml", "MicrovmMachineTemplate"},
	{"microvmclustertemplate-full.yaml", "MicrovmClusterTemplate"},
	{"microvmclustertemplate-dynamic.yaml", "MicrovmClusterTemplate"},
}

// newObject returns an empty typed object of a kind.
func newObject(t *testing.T, kind string) runtime.Object {
	t.Helper()
	switch kind {
	case "MicrovmCluster":
		return &infrav1.MicrovmCluster{}
	case "MicrovmMachine":
		return &infrav1.MicrovmMachine{}
	case "MicrovmMachineTemplate":
		return &infrav1.MicrovmMachineTemplate{}
	case "MicrovmClusterTemplate":
		return &infrav1.MicrovmClusterTemplate{}
	}
	t.Fatalf("unknown kind %q", kind)
	return nil
}

func readTestdata(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decodeStrict decodes a YAML manifest the way the API server and strict
// clients do: field names match case-sensitively, and unknown or duplicate
// fields are errors. (encoding/json, behind yaml.UnmarshalStrict, would
// match field names case-insensitively and accept a misspelt
// controlPlaneAllowed.)
func decodeStrict(y []byte, obj any) error {
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// toUnstructured turns YAML into the JSON value the API server works on
// (integers as int64).
func toUnstructured(t *testing.T, y []byte) map[string]any {
	t.Helper()
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := utiljson.Unmarshal(j, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestManifestsDecodeStrictlyAndRoundTrip decodes every manifest into its Go
// type rejecting unknown and duplicate fields, then checks that encoding the
// typed object gives back exactly the manifest's content.
func TestManifestsDecodeStrictlyAndRoundTrip(t *testing.T) {
	for _, m := range manifests {
		t.Run(m.file, func(t *testing.T) {
			data := readTestdata(t, m.file)
			obj := newObject(t, m.kind)
			if err := decodeStrict(data, obj); err != nil {
				t.Fatalf("strict decode: %v", err)
			}
			if gvk := obj.GetObjectKind().GroupVersionKind(); gvk != infrav1.GroupVersion.WithKind(m.kind) {
				t.Fatalf("decoded %v, want %v", gvk, infrav1.GroupVersion.WithKind(m.kind))
			}
			out, err := yaml.Marshal(obj)
			if err != nil {
				t.Fatal(err)
			}
			want, got := toUnstructured(t, data), toUnstructured(t, out)
			if !reflect.DeepEqual(want, got) {
				t.Fatalf("round trip changed the manifest\nwant:\n%s\ngot:\n%s", data, out)
			}
			again := newObject(t, m.kind)
			if err := decodeStrict(out, again); err != nil {
				t.Fatalf("strict decode of the re-encoded object: %v", err)
			}
			if !reflect.DeepEqual(obj, again) {
				t.Fatalf("typed round trip differs:\n%#v\n%#v", obj, again)
			}
		})
	}
}

// TestSeedClusterValues checks that the seed's fields land where the
// controllers read them.
func TestSeedClusterValues(t *testing.T) {
	var c infrav1.MicrovmCluster
	if err := decodeStrict(readTestdata(t, "microvmcluster-seed.yaml"), &c); err != nil {
		t.Fatal(err)
	}
	if c.Spec.ControlPlaneEndpoint.Host != "192.168.10.25" || c.Spec.ControlPlaneEndpoint.Port != 6443 {
		t.Errorf("controlPlaneEndpoint = %+v", c.Spec.ControlPlaneEndpoint)
	}
	if c.Spec.Placement.StaticPool == nil || c.Spec.Placement.DynamicPool != nil {
		t.Fatalf("placement = %+v", c.Spec.Placement)
	}
	var endpoints []string
	for _, h := range c.Spec.Placement.StaticPool.Hosts {
		endpoints = append(endpoints, h.Endpoint)
		if !h.AllowsControlPlane() {
			t.Errorf("host %s: control plane not allowed", h.Endpoint)
		}
	}
	if got := strings.Join(endpoints, ","); got != "147.75.80.43:9090,147.75.80.45:9090" {
		t.Errorf("hosts = %s", got)
	}
}

// TestMachineValues checks a few typed values of the full machine, including
// the v1beta2 contract status.
func TestMachineValues(t *testing.T) {
	var m infrav1.MicrovmMachine
	if err := decodeStrict(readTestdata(t, "microvmmachine-full.yaml"), &m); err != nil {
		t.Fatal(err)
	}
	s := m.Spec
	if s.VCPU != 2 || s.MemoryMb != 2048 || s.Provider != "qemu" {
		t.Errorf("sizes = %d/%d/%q", s.VCPU, s.MemoryMb, s.Provider)
	}
	if len(s.AdditionalVolumes) != 2 || s.AdditionalVolumes[1].VirtiofsPath != "/srv/shared" {
		t.Errorf("volumes = %+v", s.AdditionalVolumes)
	}
	if s.NetworkInterfaces[0].Type != infrav1.IfaceTypeMacvtap || s.NetworkInterfaces[1].Type != infrav1.IfaceTypeTap {
		t.Errorf("interfaces = %+v", s.NetworkInterfaces)
	}
	if s.KernelCmdLine["panic"] != "1" || s.Initrd == nil || s.Initrd.Filename != "boot/initrd.img" {
		t.Errorf("kernel cmdline %v, initrd %+v", s.KernelCmdLine, s.Initrd)
	}
	st := m.Status
	if st.Initialization.Provisioned == nil || !*st.Initialization.Provisioned || !st.Ready {
		t.Errorf("initialization = %+v, ready = %v", st.Initialization, st.Ready)
	}
	if st.VMState == nil || *st.VMState != infrav1.VMStateRunning {
		t.Errorf("vmState = %v", st.VMState)
	}
	if len(m.GetConditions()) != 2 || m.GetConditions()[1].Type != infrav1.MicrovmReadyCondition {
		t.Errorf("conditions = %+v", m.GetConditions())
	}
	if len(st.Addresses) != 2 || st.Addresses[0].Address != "192.0.2.50" {
		t.Errorf("addresses = %+v", st.Addresses)
	}
}

// TestStrictDecodeRejectsUnknownFields proves the decoding above is strict: a
// misspelt field fails instead of being dropped.
func TestStrictDecodeRejectsUnknownFields(t *testing.T) {
	data := readTestdata(t, "microvmcluster-seed.yaml")
	bad := bytes.Replace(data, []byte("controlplaneAllowed"), []byte("controlPlaneAllowed"), 1)
	if bytes.Equal(bad, data) {
		t.Fatal("the seed no longer has controlplaneAllowed")
	}
	var c infrav1.MicrovmCluster
	err := decodeStrict(bad, &c)
	if err == nil || !strings.Contains(err.Error(), "controlPlaneAllowed") {
		t.Fatalf("strict decode of a misspelt field: err = %v", err)
	}
	bad = bytes.Replace(data, []byte("  placement:"), []byte("  sshPublicKey: ssh-ed25519 AAAA\n  placement:"), 1)
	err = decodeStrict(bad, &c)
	if err == nil || !strings.Contains(err.Error(), "sshPublicKey") {
		t.Fatalf("strict decode of an unknown field: err = %v", err)
	}
}

// TestSchemeDecodesEveryKind decodes the manifests through a strict codec of
// a scheme built with AddToScheme, as a controller-runtime client would.
func TestSchemeDecodesEveryKind(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := infrav1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"MicrovmCluster", "MicrovmMachine", "MicrovmMachineTemplate", "MicrovmClusterTemplate"} {
		for _, k := range []string{kind, kind + "List"} {
			if !scheme.Recognizes(infrav1.GroupVersion.WithKind(k)) {
				t.Errorf("scheme does not know %s", k)
			}
		}
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	for _, m := range manifests {
		obj, gvk, err := decoder.Decode(readTestdata(t, m.file), nil, nil)
		if err != nil {
			t.Errorf("%s: %v", m.file, err)
			continue
		}
		if gvk.Kind != m.kind || reflect.TypeOf(obj) != reflect.TypeOf(newObject(t, m.kind)) {
			t.Errorf("%s: decoded %v as %T", m.file, gvk, obj)
		}
	}
	bad := bytes.Replace(readTestdata(t, "microvmmachine-full.yaml"), []byte("memoryMb"), []byte("memoryMB"), 1)
	if _, _, err := decoder.Decode(bad, nil, nil); err == nil {
		t.Error("strict codec accepted an unknown field memoryMB")
	}
}
