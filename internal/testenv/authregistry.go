package testenv

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// NewAuthRegistry starts a registry like NewRegistry that requires basic
// auth as user with password (an htpasswd file with its bcrypt hash), and
// stops it when the test ends.
func NewAuthRegistry(t testing.TB, user, password string) *Registry {
	t.Helper()
	ctx := context.Background()
	bin, err := RegistryBinary(ctx)
	if err != nil {
		t.Fatalf("registry binary: %v", err)
	}
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := StartRegistry(ctx, bin, filepath.Join(dir, "registry"), htpasswd)
	if err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("stop registry: %v", err)
		}
	})
	return r
}
