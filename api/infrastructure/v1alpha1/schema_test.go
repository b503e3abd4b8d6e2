package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsinstall "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/install"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/listtype"
	structuralpruning "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

const crdDir = "../../../config/crd/bases"

// crdSchema is a generated CRD with the validators the API server builds
// from it.
type crdSchema struct {
	crd        *apiextensionsv1.CustomResourceDefinition
	internal   *apiextensions.CustomResourceDefinition
	structural *structuralschema.Structural
	validator  apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

// loadCRD reads the generated CRD of a kind.
func loadCRD(t *testing.T, kind string) *crdSchema {
	t.Helper()
	file := filepath.Join(crdDir, "infrastructure.cluster.x-k8s.io_"+strings.ToLower(kind)+"s.yaml")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := decodeStrict(b, crd); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	scheme := runtime.NewScheme()
	apiextensionsinstall.Install(scheme)
	scheme.Default(crd)
	internal := &apiextensions.CustomResourceDefinition{}
	if err := scheme.Convert(crd, internal, nil); err != nil {
		t.Fatal(err)
	}
	// The internal form moves a schema shared by every version to
	// spec.validation.
	validation := internal.Spec.Validation
	if len(internal.Spec.Versions) == 1 && internal.Spec.Versions[0].Schema != nil {
		validation = internal.Spec.Versions[0].Schema
	}
	if len(internal.Spec.Versions) != 1 || validation == nil || validation.OpenAPIV3Schema == nil {
		t.Fatalf("%s: want one version with a schema", file)
	}
	props := validation.OpenAPIV3Schema
	structural, err := structuralschema.NewStructural(props)
	if err != nil {
		t.Fatalf("%s: not a structural schema: %v", file, err)
	}
	validator, _, err := apiservervalidation.NewSchemaValidator(props)
	if err != nil {
		t.Fatal(err)
	}
	return &crdSchema{
		crd:        crd,
		internal:   internal,
		structural: structural,
		validator:  validator,
		cel:        cel.NewValidator(structural, true, celconfig.PerCallLimit),
	}
}

// admit does to obj what the API server does to a created custom resource:
// prune unknown fields, apply defaults, then validate against the OpenAPI
// schema, the list types and the CEL rules. It returns the pruned paths and
// the validation errors.
func (c *crdSchema) admit(obj map[string]any) (pruned []string, errs field.ErrorList) {
	pruned = structuralpruning.PruneWithOptions(obj, c.structural, true,
		structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	structuraldefaulting.Default(obj, c.structural)
	errs = apiservervalidation.ValidateCustomResource(nil, obj, c.validator)
	errs = append(errs, listtype.ValidateListSetsAndMaps(nil, c.structural, obj)...)
	celErrs, _ := c.cel.Validate(context.Background(), nil, c.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	return pruned, append(errs, celErrs...)
}

// TestCRDsAreValid runs the API server's own CRD validation on every
// generated CRD (structural schema, defaults, list types, CEL compilation and
// cost) and checks the Cluster API contract metadata.
func TestCRDsAreValid(t *testing.T) {
	type want struct {
		kind, shortName string
		status          bool
		columns         []string
	}
	for _, w := range []want{
		{"MicrovmCluster", "mvmc", true, []string{"Cluster", "Provisioned", "Ready", "Endpoint", "Age"}},
		{"MicrovmMachine", "mvmm", true, []string{"Cluster", "Machine", "ProviderID", "VMState", "Provisioned", "Ready", "Age"}},
		{"MicrovmMachineTemplate", "mvmmt", true, []string{"Age"}},
		{"MicrovmClusterTemplate", "mvmct", false, []string{"Age"}},
	} {
		t.Run(w.kind, func(t *testing.T) {
			c := loadCRD(t, w.kind)
			if errs := crdvalidation.ValidateCustomResourceDefinition(context.Background(), c.internal); len(errs) > 0 {
				t.Fatalf("the API server would reject the CRD: %v", errs.ToAggregate())
			}
			crd := c.crd
			plural := strings.ToLower(w.kind) + "s"
			// Cluster API finds the CRD by contract.CalculateCRDName and reads
			// the contract version from this label.
			if crd.Name != plural+"."+infrav1.GroupVersion.Group {
				t.Errorf("name = %s", crd.Name)
			}
			if v := crd.Labels["cluster.x-k8s.io/v1beta2"]; v != infrav1.GroupVersion.Version {
				t.Errorf("contract label cluster.x-k8s.io/v1beta2 = %q", v)
			}
			n := crd.Spec.Names
			if n.Kind != w.kind || n.Plural != plural || crd.Spec.Scope != apiextensionsv1.NamespaceScoped {
				t.Errorf("names = %+v, scope %s", n, crd.Spec.Scope)
			}
			if !slices.Contains(n.ShortNames, w.shortName) || !slices.Contains(n.Categories, "cluster-api") {
				t.Errorf("short names %v, categories %v", n.ShortNames, n.Categories)
			}
			v := crd.Spec.Versions[0]
			if v.Name != "v1alpha1" || !v.Served || !v.Storage {
				t.Errorf("version %s served=%v storage=%v", v.Name, v.Served, v.Storage)
			}
			if got := v.Subresources != nil && v.Subresources.Status != nil; got != w.status {
				t.Errorf("status subresource = %v, want %v", got, w.status)
			}
			var columns []string
			for _, col := range v.AdditionalPrinterColumns {
				columns = append(columns, col.Name)
			}
			if !slices.Equal(columns, w.columns) {
				t.Errorf("printer columns = %v, want %v", columns, w.columns)
			}
		})
	}
}

// TestSchemaAcceptsManifests admits every valid manifest: nothing may be
// pruned (the schema knows every field) and nothing may be rejected.
func TestSchemaAcceptsManifests(t *testing.T) {
	for _, m := range manifests {
		t.Run(m.file, func(t *testing.T) {
			c := loadCRD(t, m.kind)
			obj := toUnstructured(t, readTestdata(t, m.file))
			pruned, errs := c.admit(obj)
			if len(pruned) > 0 {
				t.Errorf("unknown fields pruned: %v", pruned)
			}
			if len(errs) > 0 {
				t.Errorf("rejected: %v", errs.ToAggregate())
			}
		})
	}
}

// TestManifestsCoverEverySchemaField makes sure the valid manifests use every
// field of each schema, so the tests above cover the whole contract.
func TestManifestsCoverEverySchemaField(t *testing.T) {
	byKind := map[string][]string{}
	for _, m := range manifests {
		byKind[m.kind] = append(byKind[m.kind], m.file)
	}
	for kind, files := range byKind {
		t.Run(kind, func(t *testing.T) {
			c := loadCRD(t, kind)
			var schemaPaths []string
			for _, top := range []string{"spec", "status"} {
				if s, ok := c.structural.Properties[top]; ok {
					schemaPaths = append(schemaPaths, schemaLeaves(top, &s)...)
				}
			}
			used := map[string]bool{}
			for _, f := range files {
				obj := toUnstructured(t, readTestdata(t, f))
				for _, p := range valueLeaves("", obj) {
					used[p] = true
				}
			}
			var missing []string
			for _, p := range schemaPaths {
				if !used[p] {
					missing = append(missing, p)
				}
			}
			sort.Strings(missing)
			if len(missing) > 0 {
				t.Errorf("fields no manifest uses: %v", missing)
			}
			if len(schemaPaths) < 10 {
				t.Errorf("only %d schema fields found", len(schemaPaths))
			}
		})
	}
}

// schemaLeaves lists the paths of a schema's leaf fields; list items are
// written p[] and maps (additionalProperties) are leaves.
func schemaLeaves(path string, s *structuralschema.Structural) []string {
	switch {
	case s.Type == "array" && s.Items != nil:
		return schemaLeaves(path+"[]", s.Items)
	case s.Type == "object" && len(s.Properties) > 0:
		var out []string
		for name, p := range s.Properties {
			out = append(out, schemaLeaves(path+"."+name, &p)...)
		}
		return out
	}
	return []string{path}
}

// valueLeaves lists the paths of a JSON value, written like schemaLeaves'.
func valueLeaves(path string, v any) []string {
	switch v := v.(type) {
	case []any:
		var out []string
		for _, e := range v {
			out = append(out, valueLeaves(path+"[]", e)...)
		}
		return out
	case map[string]any:
		out := []string{path}
		for k, e := range v {
			p := k
			if path != "" {
				p = path + "." + k
			}
			out = append(out, valueLeaves(p, e)...)
		}
		return out
	}
	return []string{path}
}

// TestSchemaRejectsBadManifests admits broken variants of the valid
// manifests and expects an error on the broken field.
func TestSchemaRejectsBadManifests(t *testing.T) {
	type edit func(obj map[string]any)
	cases := []struct {
		name, file, kind string
		edit             edit
		field            string // path of the expected error
		detail           string // part of its message
	}{
		{"vcpu 0", "microvmmachine-full.yaml", "MicrovmMachine",
			set("spec.vcpu", int64(0)), "spec.vcpu", "greater than or equal to 1"},
		{"memoryMb 512", "microvmmachine-full.yaml", "MicrovmMachine",
			set("spec.memoryMb", int64(512)), "spec.memoryMb", "greater than or equal to 1024"},
		{"interface type bridge", "microvmmachine-full.yaml", "MicrovmMachine",
			set("spec.networkInterfaces.0.type", "bridge"), "spec.networkInterfaces[0].type", "Unsupported value"},
		{"no interfaces", "microvmmachine-full.yaml", "MicrovmMachine",
			set("spec.networkInterfaces", []any{}), "spec.networkInterfaces", "at least 1"},
		{"interfaces missing", "microvmmachine-full.yaml", "MicrovmMachine",
			del("spec.networkInterfaces"), "spec.networkInterfaces", "Required"},
		{"kernel missing", "microvmmachine-full.yaml", "MicrovmMachine",
			del("spec.kernel"), "spec.kernel", "Required"},
		{"root volume without image", "microvmmachine-full.yaml", "MicrovmMachine",
			del("spec.rootVolume.image"), "spec.rootVolume.image", "Required"},
		{"volume with image and virtiofsPath", "microvmmachine-full.yaml", "MicrovmMachine",
			set("spec.volumes.1.image", "example/img:1"), "spec.volumes[1]", "exactly one of image or virtiofsPath"},
		{"volume without source", "microvmmachine-full.yaml", "MicrovmMachine",
			del("spec.volumes.1.virtiofsPath"), "spec.volumes[1]", "exactly one of image or virtiofsPath"},
		{"duplicate guest device", "microvmmachine-full.yaml", "MicrovmMachine",
			set("spec.networkInterfaces.1.guestDeviceName", "eth1"), "spec.networkInterfaces[1]", "Duplicate"},
		{"unknown vmState", "microvmmachine-full.yaml", "MicrovmMachine",
			set("status.vmState", "exploded"), "status.vmState", "Unsupported value"},
		{"empty initialization", "microvmmachine-full.yaml", "MicrovmMachine",
			set("status.initialization", map[string]any{}), "status.initialization", "at least 1"},
		{"template vcpu 0", "microvmmachinetemplate-full.yaml", "MicrovmMachineTemplate",
			set("spec.template.spec.vcpu", int64(0)), "spec.template.spec.vcpu", "greater than or equal to 1"},
		{"template interface type bridge", "microvmmachinetemplate-full.yaml", "MicrovmMachineTemplate",
			set("spec.template.spec.networkInterfaces.0.type", "bridge"), "spec.template.spec.networkInterfaces[0].type", "Unsupported value"},
		{"no hosts", "microvmcluster-seed.yaml", "MicrovmCluster",
			set("spec.placement.staticPool.hosts", []any{}), "spec.placement.staticPool.hosts", "at least 1"},
		{"hosts missing", "microvmcluster-seed.yaml", "MicrovmCluster",
			del("spec.placement.staticPool.hosts"), "spec.placement.staticPool.hosts", "Required"},
		{"placement missing", "microvmcluster-seed.yaml", "MicrovmCluster",
			del("spec.placement"), "spec.placement", "Required"},
		{"empty placement", "microvmcluster-seed.yaml", "MicrovmCluster",
			set("spec.placement", map[string]any{}), "spec.placement", "exactly one of staticPool or dynamicPool"},
		{"static and dynamic pools", "microvmcluster-dynamic.yaml", "MicrovmCluster",
			set("spec.placement.staticPool", map[string]any{"hosts": []any{map[string]any{"endpoint": "192.0.2.9:9090"}}}),
			"spec.placement", "exactly one of staticPool or dynamicPool"},
		{"host without endpoint", "microvmcluster-seed.yaml", "MicrovmCluster",
			del("spec.placement.staticPool.hosts.1.endpoint"), "spec.placement.staticPool.hosts[1].endpoint", "Required"},
		{"duplicate host endpoint", "microvmcluster-seed.yaml", "MicrovmCluster",
			set("spec.placement.staticPool.hosts.1.endpoint", "147.75.80.43:9090"), "spec.placement.staticPool.hosts[1]", "Duplicate"},
		{"endpoint port 0", "microvmcluster-seed.yaml", "MicrovmCluster",
			set("spec.controlPlaneEndpoint.port", int64(0)), "spec.controlPlaneEndpoint.port", "greater than or equal to 1"},
		{"cluster template without hosts", "microvmclustertemplate-full.yaml", "MicrovmClusterTemplate",
			set("spec.template.spec.placement.staticPool.hosts", []any{}), "spec.template.spec.placement.staticPool.hosts", "at least 1"},
		{"machine template bad architecture", "microvmmachinetemplate-full.yaml", "MicrovmMachineTemplate",
			set("status.nodeInfo.architecture", "riscv64"), "status.nodeInfo.architecture", "Unsupported value"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := loadCRD(t, tc.kind)
			obj := toUnstructured(t, readTestdata(t, tc.file))
			// The unedited manifest must pass, so the error comes from the edit.
			if _, errs := c.admit(toUnstructured(t, readTestdata(t, tc.file))); len(errs) > 0 {
				t.Fatalf("the valid manifest is rejected: %v", errs.ToAggregate())
			}
			tc.edit(obj)
			_, errs := c.admit(obj)
			if len(errs) == 0 {
				t.Fatal("accepted")
			}
			for _, e := range errs {
				if e.Field == tc.field && strings.Contains(e.Error(), tc.detail) {
					return
				}
			}
			t.Fatalf("no error on %s mentioning %q; got: %v", tc.field, tc.detail, errs.ToAggregate())
		})
	}
}

// TestSchemaDefaults checks the CRD defaults: a host allows the control
// plane and a volume is writable unless they say otherwise.
func TestSchemaDefaults(t *testing.T) {
	cluster := loadCRD(t, "MicrovmCluster")
	obj := toUnstructured(t, readTestdata(t, "microvmcluster-seed.yaml"))
	del("spec.placement.staticPool.hosts.0.controlplaneAllowed")(obj)
	set("spec.placement.staticPool.hosts.1.controlplaneAllowed", false)(obj)
	if _, errs := cluster.admit(obj); len(errs) > 0 {
		t.Fatal(errs.ToAggregate())
	}
	if v := get(obj, "spec.placement.staticPool.hosts.0.controlplaneAllowed"); v != true {
		t.Errorf("defaulted controlplaneAllowed = %v, want true", v)
	}
	if v := get(obj, "spec.placement.staticPool.hosts.1.controlplaneAllowed"); v != false {
		t.Errorf("explicit controlplaneAllowed false became %v", v)
	}

	// The defaulted object decodes into a host that allows the control plane.
	var c infrav1.MicrovmCluster
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj, &c); err != nil {
		t.Fatal(err)
	}
	if h := c.Spec.Placement.StaticPool.Hosts; !h[0].AllowsControlPlane() || h[1].AllowsControlPlane() {
		t.Errorf("hosts = %+v", h)
	}

	machine := loadCRD(t, "MicrovmMachine")
	obj = toUnstructured(t, readTestdata(t, "microvmmachine-full.yaml"))
	del("spec.rootVolume.readOnly")(obj)
	del("spec.volumes.1.readOnly")(obj)
	if _, errs := machine.admit(obj); len(errs) > 0 {
		t.Fatal(errs.ToAggregate())
	}
	for _, p := range []string{"spec.rootVolume.readOnly", "spec.volumes.1.readOnly"} {
		if v := get(obj, p); v != false {
			t.Errorf("defaulted %s = %v (%T), want false", p, v, v)
		}
	}
	if v := get(obj, "spec.volumes.0.readOnly"); v != true {
		t.Errorf("explicit readOnly true became %v", v)
	}

	tmpl := loadCRD(t, "MicrovmClusterTemplate")
	obj = toUnstructured(t, readTestdata(t, "microvmclustertemplate-full.yaml"))
	del("spec.template.spec.placement.staticPool.hosts.0.controlplaneAllowed")(obj)
	if _, errs := tmpl.admit(obj); len(errs) > 0 {
		t.Fatal(errs.ToAggregate())
	}
	if v := get(obj, "spec.template.spec.placement.staticPool.hosts.0.controlplaneAllowed"); v != true {
		t.Errorf("template: defaulted controlplaneAllowed = %v, want true", v)
	}
}

// walk follows a dotted path (numbers index lists) and returns the parent
// container and the last key.
func walk(obj map[string]any, path string) (parent any, key string) {
	keys := strings.Split(path, ".")
	var cur any = obj
	for _, k := range keys[:len(keys)-1] {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[k]
		case []any:
			var i int
			fmt.Sscan(k, &i)
			cur = c[i]
		default:
			panic("bad path " + path)
		}
	}
	return cur, keys[len(keys)-1]
}

func get(obj map[string]any, path string) any {
	parent, key := walk(obj, path)
	switch p := parent.(type) {
	case map[string]any:
		return p[key]
	case []any:
		var i int
		fmt.Sscan(key, &i)
		return p[i]
	}
	panic("bad path " + path)
}

func set(path string, v any) func(map[string]any) {
	return func(obj map[string]any) {
		parent, key := walk(obj, path)
		switch p := parent.(type) {
		case map[string]any:
			p[key] = v
		case []any:
			var i int
			fmt.Sscan(key, &i)
			p[i] = v
		default:
			panic("bad path " + path)
		}
	}
}

func del(path string) func(map[string]any) {
	return func(obj map[string]any) {
		parent, key := walk(obj, path)
		p, ok := parent.(map[string]any)
		if !ok {
			panic("bad path " + path)
		}
		if _, ok := p[key]; !ok {
			panic("no field " + path)
		}
		delete(p, key)
	}
}
