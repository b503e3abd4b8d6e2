package vmmtest

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"
)

// Call is one request a fake REST VMM received, as its journal (JSON
// lines) records it.
type Call struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body"`
	FDs    int             `json:"fds"` // descriptors passed along (SCM_RIGHTS)
}

// ReadJournal reads the requests of the journal at path, but those skip
// (may be nil) leaves out, such as readiness and status polls.
func ReadJournal(t testing.TB, path string, skip func(Call) bool) []Call {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var calls []Call
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var c Call
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("journal line %q: %v", sc.Text(), err)
		}
		if skip != nil && skip(c) {
			continue
		}
		calls = append(calls, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("journal %s: %v", path, err)
	}
	return calls
}

// CanonJSON re-encodes a JSON document with sorted keys, so that two
// documents compare equal when they hold the same fields and values.
func CanonJSON(t testing.TB, b []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("not JSON: %s: %v", b, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// WantCall is an expected request, its body written by hand from the API
// description ("" for none), with the number of descriptors passed.
type WantCall struct {
	Method, Path, Body string
	FDs                int
}

// CheckCalls compares the requests received with those expected, in order.
func CheckCalls(t testing.TB, got []Call, want []WantCall) {
	t.Helper()
	n := max(len(got), len(want))
	for i := range n {
		switch {
		case i >= len(got):
			t.Errorf("request %d missing: want %s %s %s", i, want[i].Method, want[i].Path, want[i].Body)
		case i >= len(want):
			t.Errorf("request %d unexpected: %s %s %s", i, got[i].Method, got[i].Path, got[i].Body)
		default:
			g, w := got[i], want[i]
			if g.Method != w.Method || g.Path != w.Path || g.FDs != w.FDs {
				t.Errorf("request %d: %s %s with %d fds, want %s %s with %d", i, g.Method, g.Path, g.FDs, w.Method, w.Path, w.FDs)
				continue
			}
			if w.Body == "" {
				if len(g.Body) != 0 {
					t.Errorf("request %d %s %s has a body: %s", i, g.Method, g.Path, g.Body)
				}
				continue
			}
			if gb, wb := CanonJSON(t, g.Body), CanonJSON(t, []byte(w.Body)); gb != wb {
				t.Errorf("request %d %s %s body:\n got %s\nwant %s", i, g.Method, g.Path, gb, wb)
			}
		}
	}
}
