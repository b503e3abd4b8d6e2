package mds

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func serve(h http.Handler, method, path string, headers map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	for k, v := range headers {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestTokens: with tokens required, a request needs a token from PUT
// /latest/api/token; tokens expire after their TTL; TTLs out of range, a
// proxied PUT and other methods are refused.
func TestTokens(t *testing.T) {
	d, err := newVMData("vm-1", docs("vm-1", "s"))
	if err != nil {
		t.Fatal(err)
	}
	h := newVMHandler(d, true)
	now := time.Unix(1_800_000_000, 0)
	h.now = func() time.Time { return now }

	if w := serve(h, "GET", "/latest/meta-data/instance-id", nil); w.Code != 401 {
		t.Errorf("no token, tokens required: %d", w.Code)
	}
	for _, ttl := range []string{"", "0", "21601", "x"} {
		if w := serve(h, "PUT", "/latest/api/token", map[string]string{headerTTL: ttl}); w.Code != 400 {
			t.Errorf("TTL %q: %d, want 400", ttl, w.Code)
		}
	}
	if w := serve(h, "PUT", "/latest/api/token", map[string]string{headerTTL: "10", "X-Forwarded-For": "1.2.3.4"}); w.Code != 403 {
		t.Errorf("proxied PUT: %d, want 403", w.Code)
	}
	w := serve(h, "PUT", "/latest/api/token", map[string]string{headerTTLEC2: "10"})
	tok := w.Body.String()
	if w.Code != 200 || tok == "" || w.Header().Get(headerTTL) != "10" {
		t.Fatalf("PUT token: %d %q %v", w.Code, tok, w.Header())
	}
	if w := serve(h, "GET", "/latest/meta-data/instance-id", map[string]string{headerToken: tok}); w.Code != 200 || w.Body.String() != "vm-1" {
		t.Errorf("with token: %d %q", w.Code, w.Body)
	}
	now = now.Add(10 * time.Second)
	if w := serve(h, "GET", "/latest/meta-data/instance-id", map[string]string{headerToken: tok}); w.Code != 401 {
		t.Errorf("expired token: %d", w.Code)
	}
	// Another VM's handler (another key) refuses the token.
	other := newVMHandler(d, false)
	other.now = h.now
	tok2 := serve(h, "PUT", "/latest/api/token", map[string]string{headerTTL: "100"}).Body.String()
	if w := serve(other, "GET", "/latest/meta-data/", map[string]string{headerToken: tok2}); w.Code != 401 {
		t.Errorf("foreign token: %d", w.Code)
	}
	if w := serve(other, "GET", "/latest/meta-data/", nil); w.Code != 200 {
		t.Errorf("no token, not required: %d", w.Code)
	}
	for _, c := range []struct{ method, path string }{{"POST", "/latest/meta-data/"}, {"DELETE", "/latest/user-data"}, {"PUT", "/latest/user-data"}} {
		if w := serve(other, c.method, c.path, nil); w.Code != 405 {
			t.Errorf("%s %s: %d, want 405", c.method, c.path, w.Code)
		}
	}
	for _, p := range []string{"/nope", "/latest/meta-data/nope", "/latest/meta-data/instance-id/x", "/latest/meta-data/tags/7", "/latest/vendor-data", "/nocloud/vendor-data"} {
		if w := serve(other, "GET", p, nil); w.Code != 404 {
			t.Errorf("GET %s: %d, want 404", p, w.Code)
		}
	}
	if w := serve(other, "GET", "/latest", nil); w.Body.String() != "meta-data/\nuser-data\n" {
		t.Errorf("GET /latest: %q", w.Body)
	}
	if w := serve(other, "GET", "/", nil); !strings.Contains(w.Body.String(), "latest") {
		t.Errorf("GET /: %q", w.Body)
	}
}
