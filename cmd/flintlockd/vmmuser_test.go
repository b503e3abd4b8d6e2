package main

import (
	"io"
	"log/slog"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

func TestResolveVMMUser(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	u, err := resolveVMMUser("64123:64124", log)
	if err != nil || u.UID != 64123 || u.GID != 64124 {
		t.Fatalf("uid:gid: %v %v", u, err)
	}
	if _, err := resolveVMMUser("no-such-user-lm", log); !errdefs.IsNotFound(err) {
		t.Fatalf("unknown user: %v", err)
	}
	// Unset: the dedicated user when the host has it, else root.
	u, err = resolveVMMUser("", log)
	if err != nil {
		t.Fatal(err)
	}
	want, lerr := process.LookupUser(process.DefaultVMMUser)
	if lerr != nil {
		want = process.Root
	}
	if u != want {
		t.Fatalf("default: %v, want %v", u, want)
	}
}
