package testenv

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestContainerd(t *testing.T) {
	c := NewContainerd(t)
	if len(c.Address) >= 108 {
		t.Fatalf("socket path too long: %s", c.Address)
	}
	cl, err := c.Client("testenv")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := cl.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.Version == "" {
		t.Fatal("empty containerd version")
	}
	// The daemon keeps its data under Root, not in the host's default.
	entries, err := os.ReadDir(c.Root)
	if err != nil || len(entries) == 0 {
		t.Fatalf("containerd root %s is empty: %v", c.Root, err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	// The client would wait for the daemon to come back: ask briefly.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if _, err := cl.Version(short); err == nil {
		t.Fatal("containerd still answers after Stop")
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}
