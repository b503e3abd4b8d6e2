package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRegistryBlobRoundTrip pushes a blob with the registry's HTTP API and
// reads it back, then checks Stop ends the process.
func TestRegistryBlobRoundTrip(t *testing.T) {
	r := NewRegistry(t)

	data := []byte(fmt.Sprintf("liquidmetal blob %d", time.Now().UnixNano()))
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	resp, err := http.Post("http://"+r.Host+"/v2/test/blob/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %s", resp.Status)
	}
	loc, err := resp.Location()
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("finish upload: %s", resp.Status)
	}

	resp, err = http.Get("http://" + r.Host + "/v2/test/blob/blobs/" + digest)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("blob read back = %q, want %q", got, data)
	}
	if _, err := os.Stat(filepath.Join(r.Dir, "storage", "docker", "registry", "v2", "blobs")); err != nil {
		t.Fatalf("storage not in the registry folder: %v", err)
	}

	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + r.Host + "/v2/"); err == nil {
		t.Fatal("registry still answers after Stop")
	}
}

// TestRegistryHtpasswd checks that a registry started with an htpasswd file
// refuses anonymous requests and accepts the listed user.
func TestRegistryHtpasswd(t *testing.T) {
	bin, err := RegistryBinary(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// bcrypt (cost 4, to keep the test quick) of "secret", made with crypt(3); the registry accepts only bcrypt.
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("tester:$2b$04$E514qusapgUFcCaOfdKlm.yVkgGnGj1diDCzaA2c9TQno/5Dzv9HG\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := StartRegistry(context.Background(), bin, filepath.Join(dir, "reg"), htpasswd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Stop() })

	get := func(user, pass string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+r.Host+"/v2/", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("", ""); code != http.StatusUnauthorized {
		t.Errorf("anonymous: %d, want 401", code)
	}
	if code := get("tester", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong password: %d, want 401", code)
	}
	if code := get("tester", "secret"); code != http.StatusOK {
		t.Errorf("right password: %d, want 200", code)
	}
}
