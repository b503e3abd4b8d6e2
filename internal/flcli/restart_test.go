package flcli

import (
	"testing"

	"github.com/spf13/pflag"
)

// The restart flags set the spec's restart fields; unset, they leave a
// file's values alone.
func TestRestartFlags(t *testing.T) {
	var s specFlags
	fs := pflag.NewFlagSet("create", pflag.ContinueOnError)
	s.register(fs)
	if err := fs.Parse([]string{"--name", "vm", "--restart-policy", "on-failure", "--max-restarts", "3"}); err != nil {
		t.Fatal(err)
	}
	spec, err := s.build(fs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if spec.GetRestartPolicy() != "on-failure" || spec.GetMaxRestarts() != 3 {
		t.Fatalf("policy %q max %d", spec.GetRestartPolicy(), spec.GetMaxRestarts())
	}
	var s2 specFlags
	fs2 := pflag.NewFlagSet("create", pflag.ContinueOnError)
	s2.register(fs2)
	if err := fs2.Parse([]string{"--name", "vm"}); err != nil {
		t.Fatal(err)
	}
	spec, err = s2.build(fs2, nil)
	if err != nil || spec.GetRestartPolicy() != "" || spec.GetMaxRestarts() != 0 {
		t.Fatalf("unset flags: %v %v", spec, err)
	}
}
