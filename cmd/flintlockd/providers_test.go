package main

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/spf13/pflag"
)

// providerOptions are flintlockd's options with the VMM flags parsed from
// args (and the environment) as "flintlockd run" does, the default
// provider given and QEMU's settings at their defaults.
func providerOptions(t *testing.T, defaultProvider string, args ...string) *options {
	t.Helper()
	o := &options{defaultProvider: defaultProvider, qemuBinary: "qemu-system-x86_64", qemuAccel: "tcg"}
	f := pflag.NewFlagSet("run", pflag.ContinueOnError)
	addVMMFlags(f, &o.vmm)
	if err := f.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := applyConfig(f, ""); err != nil {
		t.Fatal(err)
	}
	o.vmm.changed = f.Changed
	return o
}

// A provider is registered when its binary is found, skipped (and said so)
// when it is not and nobody asked for it, and an error when asked for.
func TestNewProviders(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"firecracker", "cloud-hypervisor", "virtiofsd"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// PATH holds QEMU only: no firecracker, no cloud-hypervisor.
	qemuBin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("QEMU is needed: %v", err)
	}
	pathDir := t.TempDir()
	if err := os.Symlink(qemuBin, filepath.Join(pathDir, "qemu-system-x86_64")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", pathDir)
	fc, ch := filepath.Join(dir, "firecracker"), filepath.Join(dir, "cloud-hypervisor")

	for _, tc := range []struct {
		name    string
		def     string // --default-provider; qemu when empty
		args    []string
		want    string // sorted provider names, or
		wantErr string // an error containing this
		logs    []string
	}{
		{name: "qemu only", want: "qemu",
			logs: []string{`msg="VMM provider not registered: binary not found" provider=firecracker`, `provider=cloudhypervisor flag=--cloud-hypervisor-binary`, `msg="VMM provider registered" provider=qemu default=true`}},
		{name: "all three", args: []string{"--firecracker-binary", fc, "--cloud-hypervisor-binary", ch, "--virtiofsd-binary", filepath.Join(dir, "virtiofsd")},
			want: "cloudhypervisor,firecracker,qemu", logs: []string{`provider=cloudhypervisor default=false virtiofs=true macvtap=true guest-agent=true`}},
		{name: "default firecracker", def: "firecracker", args: []string{"--firecracker-binary", fc}, want: "firecracker,qemu",
			logs: []string{`provider=firecracker default=true`}},
		{name: "default provider missing", def: "cloudhypervisor", wantErr: "provider cloudhypervisor (--cloud-hypervisor-binary)"},
		{name: "unknown default", def: "xen", wantErr: `--default-provider: "xen" is not a provider`},
		{name: "asked-for binary missing", args: []string{"--firecracker-binary", filepath.Join(dir, "none")}, wantErr: "provider firecracker (--firecracker-binary)"},
		{name: "asked-for jailer missing", args: []string{"--firecracker-binary", fc, "--firecracker-jailer", filepath.Join(dir, "none"),
			"--firecracker-jailer-uid", "1000", "--firecracker-jailer-gid", "1000"}, wantErr: "jailer binary"},
		{name: "jailer as root", args: []string{"--firecracker-binary", fc, "--firecracker-jailer", fc}, wantErr: "an unprivileged user is needed"},
		{name: "bad log level", args: []string{"--firecracker-binary", fc, "--firecracker-log-level", "Loud"}, wantErr: `log level "Loud"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			def := tc.def
			if def == "" {
				def = "qemu"
			}
			o := providerOptions(t, def, tc.args...)
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			providers, err := newProviders(o, log)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(sortedNames(providers), ","); got != tc.want {
				t.Errorf("providers %s, want %s", got, tc.want)
			}
			for _, l := range tc.logs {
				if !strings.Contains(logs.String(), l) {
					t.Errorf("log lacks %q:\n%s", l, logs.String())
				}
			}
		})
	}
}

func TestMetadataAddress(t *testing.T) {
	for in, want := range map[string]string{
		"off": "", "": "", "OFF": "",
		"169.254.169.254:80": "169.254.169.254:80",
		"169.254.169.254":    "169.254.169.254:80",
		"10.0.0.1:8080":      "10.0.0.1:8080",
		"[fd00::1]:80":       "error",
		"fd00::1":            "error",
		"169.254.169.254:0":  "error",
		"on":                 "error",
	} {
		ap, on, err := metadataAddress(in)
		got := ""
		switch {
		case err != nil:
			got = "error"
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%q: %v is not invalid argument", in, err)
			}
		case on:
			got = ap.String()
		}
		if got != want {
			t.Errorf("metadataAddress(%q) = %q (%v), want %q", in, got, err, want)
		}
	}
	// The default is off: no nftables tables appear behind the operator's back.
	if o := providerOptions(t, "qemu"); o.vmm.metadataService != "off" {
		t.Errorf("--metadata-service defaults to %q", o.vmm.metadataService)
	}
}
