package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(file, []byte("state-dir: /from/file\nworkers: 3\nqemu-accel: kvm\nresync-period: 2m\ninsecure: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLINTLOCKD_WORKERS", "5")
	t.Setenv("FLINTLOCKD_QEMU_ACCEL", "tcg")

	cmd := newRunCommand()
	if err := cmd.Flags().Parse([]string{"--qemu-accel", "auto"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfig(cmd.Flags(), file); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	for name, want := range map[string]string{
		"state-dir":     "/from/file", // file only
		"workers":       "5",          // env beats file
		"qemu-accel":    "auto",       // flag beats env and file
		"resync-period": (2 * time.Minute).String(),
		"insecure":      "true",
		"grpc-endpoint": "0.0.0.0:9090", // default
	} {
		if got := get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key": "no-such-flag: 1\n",
		"bad value":   "workers: many\n",
		"not yaml":    "workers: [\n",
	} {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(dir, "c.yaml")
			if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := applyConfig(newRunCommand().Flags(), file); err == nil {
				t.Fatal("want an error")
			}
		})
	}
	if err := applyConfig(newRunCommand().Flags(), filepath.Join(dir, "missing.yaml")); err == nil {
		t.Fatal("missing file: want an error")
	}
}

func TestTLSIsDefault(t *testing.T) {
	if _, err := serverTLS(&options{}); err == nil {
		t.Fatal("no TLS files and no --insecure must be refused")
	}
	if c, err := serverTLS(&options{insecure: true}); err != nil || c != nil {
		t.Fatalf("--insecure: %v %v", c, err)
	}
	if _, err := serverTLS(&options{insecure: true, tlsCert: "a", tlsKey: "b"}); err == nil {
		t.Fatal("--insecure with certificates must be refused")
	}
}
