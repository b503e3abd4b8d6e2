package v1alpha1_test

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// TestDeepCopyIsDeep fills every exported field of each root type (and its
// list) with a value, copies it, changes every value reachable from the copy,
// and checks that the original is unchanged.
func TestDeepCopyIsDeep(t *testing.T) {
	for _, newObj := range []func() runtime.Object{
		func() runtime.Object { return &infrav1.MicrovmCluster{} },
		func() runtime.Object { return &infrav1.MicrovmClusterList{} },
		func() runtime.Object { return &infrav1.MicrovmMachine{} },
		func() runtime.Object { return &infrav1.MicrovmMachineList{} },
		func() runtime.Object { return &infrav1.MicrovmMachineTemplate{} },
		func() runtime.Object { return &infrav1.MicrovmMachineTemplateList{} },
		func() runtime.Object { return &infrav1.MicrovmClusterTemplate{} },
		func() runtime.Object { return &infrav1.MicrovmClusterTemplateList{} },
	} {
		orig, pristine := newObj(), newObj()
		t.Run(fmt.Sprintf("%T", orig), func(t *testing.T) {
			n := fill(reflect.ValueOf(orig).Elem(), 1)
			fill(reflect.ValueOf(pristine).Elem(), 1)
			if n < 20 {
				t.Fatalf("only %d values filled", n)
			}
			cp := orig.DeepCopyObject()
			if reflect.TypeOf(cp) != reflect.TypeOf(orig) {
				t.Fatalf("DeepCopyObject returned %T", cp)
			}
			if !reflect.DeepEqual(cp, orig) {
				t.Fatal("the copy differs from the original")
			}
			if m := mutate(reflect.ValueOf(cp).Elem()); m < n {
				t.Fatalf("changed %d of %d values", m, n)
			}
			if reflect.DeepEqual(cp, orig) {
				t.Fatal("changing the copy had no effect")
			}
			if !reflect.DeepEqual(orig, pristine) {
				t.Fatal("changing the copy changed the original: the copy shares memory")
			}
		})
	}
}

// fill sets every settable exported value under v, giving slices and maps
// two entries and allocating pointers. It returns the number of leaf values
// set.
func fill(v reflect.Value, seed int) int {
	switch v.Type() {
	case reflect.TypeFor[time.Time]():
		v.Set(reflect.ValueOf(time.Date(2026, 1, 2, 3, 4, seed%60, 0, time.UTC)))
		return 1
	case reflect.TypeFor[resource.Quantity]():
		v.Set(reflect.ValueOf(resource.MustParse(fmt.Sprint(seed))))
		return 1
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("v%d", seed))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(seed%100 + 1))
	case reflect.Uint8:
		v.SetUint(uint64(seed%100 + 1))
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		return fill(v.Elem(), seed+1)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		return fill(v.Index(0), seed+1) + fill(v.Index(1), seed+2)
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		n := 0
		for i := range 2 {
			k := reflect.New(v.Type().Key()).Elem()
			k.SetString(fmt.Sprintf("k%d", i))
			e := reflect.New(v.Type().Elem()).Elem()
			n += fill(e, seed+i)
			v.SetMapIndex(k, e)
		}
		return n
	case reflect.Struct:
		n := 0
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				n += fill(v.Field(i), seed+i+1)
			}
		}
		return n
	default:
		panic(fmt.Sprintf("fill: unexpected %s", v.Type()))
	}
	return 1
}

// mutate changes every leaf value reachable from v in place: through
// pointers, slice elements and map entries, the way a caller of a shallow
// copy would corrupt the original. It returns the number of values changed.
func mutate(v reflect.Value) int {
	switch v.Type() {
	case reflect.TypeFor[time.Time]():
		v.Set(reflect.ValueOf(v.Interface().(time.Time).Add(time.Hour)))
		return 1
	case reflect.TypeFor[resource.Quantity]():
		q := v.Interface().(resource.Quantity)
		q.Add(resource.MustParse("1000"))
		v.Set(reflect.ValueOf(q))
		return 1
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(v.String() + "-changed")
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(v.Int() + 1000)
	case reflect.Uint8:
		v.SetUint(v.Uint() + 100)
	case reflect.Pointer:
		if v.IsNil() {
			return 0
		}
		return mutate(v.Elem())
	case reflect.Slice:
		n := 0
		for i := range v.Len() {
			n += mutate(v.Index(i))
		}
		return n
	case reflect.Map:
		n := 0
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			n += mutate(e)
			v.SetMapIndex(k, e)
		}
		return n
	case reflect.Struct:
		n := 0
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				n += mutate(v.Field(i))
			}
		}
		return n
	default:
		panic(fmt.Sprintf("mutate: unexpected %s", v.Type()))
	}
	return 1
}
