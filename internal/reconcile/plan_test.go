package reconcile

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/liquidmetal-go/liquidmetal/api/types"
)

func TestRunPlan(t *testing.T) {
	ctx := context.Background()
	var log []string
	flag := map[string]bool{}
	mk := func(name string, done bool, doErr error, sticks bool) step {
		flag[name] = done
		return step{
			name: name, reason: "R-" + name,
			needed: func(context.Context) (bool, error) { return !flag[name], nil },
			do: func(context.Context) error {
				log = append(log, name)
				if doErr != nil {
					return doErr
				}
				flag[name] = sticks
				return nil
			},
		}
	}

	log = nil
	if err := runPlan(ctx, []step{mk("a", true, nil, true), mk("b", false, nil, true), mk("c", false, nil, true)}, nil); err != nil {
		t.Fatal(err)
	}
	if strings.Join(log, ",") != "b,c" {
		t.Errorf("ran %v; want only the needed steps b,c in order", log)
	}

	log = nil
	boom := errors.New("boom")
	err := runPlan(ctx, []step{mk("a", false, boom, true), mk("b", false, nil, true)}, nil)
	var se *stepError
	if !errors.As(err, &se) || se.reason != "R-a" || !errors.Is(err, boom) {
		t.Fatalf("failed step: %v", err)
	}
	if strings.Join(log, ",") != "a" {
		t.Errorf("ran %v after a failure; want a only", log)
	}

	// A step whose do reports success but changes nothing fails verification.
	err = runPlan(ctx, []step{mk("v", false, nil, false)}, nil)
	if err == nil || !strings.Contains(err.Error(), "did not take effect") {
		t.Fatalf("unverified step: %v", err)
	}

	if !isPermanent(&stepError{"x", "y", permanent(boom)}) || isPermanent(boom) {
		t.Error("isPermanent must see through step errors and only there")
	}
}

func TestCmdline(t *testing.T) {
	b := &builder{vm: &types.MicroVM{Spec: &types.MicroVMSpec{
		Kernel:     &types.Kernel{Cmdline: map[string]string{"panic": "5", "quiet": "", "ds": "nocloud"}},
		RootVolume: &types.Volume{Id: "root"},
	}}}
	got := b.cmdline()
	want := "console=ttyS0 ds=nocloud panic=5 quiet reboot=k root=/dev/vda rw"
	if got != want {
		t.Errorf("cmdline %q, want %q", got, want)
	}
	b.vm.Spec.RootVolume = nil
	b.vm.Spec.Kernel.Cmdline = nil
	if got := b.cmdline(); got != "console=ttyS0 panic=1 reboot=k" {
		t.Errorf("no root volume: %q", got)
	}
}
