package mds

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"
)

// Token headers: Firecracker MMDS V2 names, and EC2 IMDSv2 names (which
// cloud-init's EC2 source sends).
const (
	headerTTL       = "X-metadata-token-ttl-seconds"
	headerToken     = "X-metadata-token"
	headerTTLEC2    = "X-aws-ec2-metadata-token-ttl-seconds"
	headerTokenEC2  = "X-aws-ec2-metadata-token"
	maxTokenTTL     = 21600 // seconds, as Firecracker and EC2
	tokenMACBytes   = 16
	tokenExpiryByte = 8
)

// versionRE matches the API versions cloud-init's EC2 source asks for.
var versionRE = regexp.MustCompile(`^(latest|[0-9]{4}-[0-9]{2}-[0-9]{2})$`)

// vmData is what one VM's listener serves. It is replaced as a whole when
// the VM is registered again.
type vmData struct {
	uid  string
	docs map[string][]byte
	meta map[string]any // meta-data parsed, for the EC2 tree
}

func newVMData(uid string, docs map[string][]byte) (*vmData, error) {
	d := &vmData{uid: uid, docs: map[string][]byte{}, meta: map[string]any{}}
	for k, v := range docs {
		d.docs[k] = bytes.Clone(v)
	}
	if md, ok := docs["meta-data"]; ok && len(bytes.TrimSpace(md)) > 0 {
		js, err := yaml.YAMLToJSON(md)
		if err != nil {
			return nil, fmt.Errorf("meta-data is not YAML: %w", err)
		}
		var v any
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("meta-data: %w", err)
		}
		m, ok := v.(map[string]any)
		if !ok && v != nil {
			return nil, fmt.Errorf("meta-data is not a mapping")
		}
		if m != nil {
			d.meta = m
		}
	}
	return d, nil
}

// vmHandler serves one VM. Everything it answers comes from data; the
// request's own content (paths, headers, query) never selects a VM.
type vmHandler struct {
	mu           sync.RWMutex
	data         *vmData
	key          []byte // signs this VM's tokens
	requireToken bool
	now          func() time.Time
}

func newVMHandler(data *vmData, requireToken bool) *vmHandler {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return &vmHandler{data: data, key: key, requireToken: requireToken, now: time.Now}
}

func (h *vmHandler) set(d *vmData) {
	h.mu.Lock()
	h.data = d
	h.mu.Unlock()
}

func (h *vmHandler) get() *vmData {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.data
}

func (h *vmHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", "liquidmetal-mds")
	path := r.URL.Path
	if r.Method == http.MethodPut {
		if path == "/latest/api/token" {
			h.issueToken(w, r)
			return
		}
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !h.authorized(w, r) {
		return
	}
	d := h.get()
	parts := splitPath(path)
	switch {
	case len(parts) == 0:
		writeText(w, "latest\n")
	case parts[0] == "nocloud" && len(parts) == 2:
		// cloud-init's NoCloud source over HTTP (seedfrom
		// http://169.254.169.254/nocloud/): the documents as files.
		h.writeDoc(w, d, parts[1])
	case !versionRE.MatchString(parts[0]):
		http.NotFound(w, r)
	case len(parts) == 1:
		var names []string
		names = append(names, "meta-data/")
		for _, n := range []string{"user-data", "vendor-data"} {
			if _, ok := d.docs[n]; ok {
				names = append(names, n)
			}
		}
		writeText(w, strings.Join(names, "\n")+"\n")
	case parts[1] == "meta-data":
		h.writeMeta(w, r, d, parts[2:])
	case len(parts) == 2 && (parts[1] == "user-data" || parts[1] == "vendor-data"):
		h.writeDoc(w, d, parts[1])
	default:
		http.NotFound(w, r)
	}
}

func splitPath(p string) []string {
	var parts []string
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			parts = append(parts, s)
		}
	}
	return parts
}

func writeText(w http.ResponseWriter, s string) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(s))
}

func (h *vmHandler) writeDoc(w http.ResponseWriter, d *vmData, name string) {
	b, ok := d.docs[name]
	if !ok {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(b)
}

// writeMeta serves the meta-data tree: a mapping lists its keys (a nested
// mapping with a trailing "/"), a list its indexes, a scalar its value.
// With "Accept: application/json" (Firecracker MMDS) the node is JSON.
func (h *vmHandler) writeMeta(w http.ResponseWriter, r *http.Request, d *vmData, keys []string) {
	var node any = d.meta
	for _, k := range keys {
		switch n := node.(type) {
		case map[string]any:
			v, ok := n[k]
			if !ok {
				http.NotFound(w, r)
				return
			}
			node = v
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(n) {
				http.NotFound(w, r)
				return
			}
			node = n[i]
		default:
			http.NotFound(w, r)
			return
		}
	}
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(node)
		return
	}
	switch n := node.(type) {
	case map[string]any:
		names := make([]string, 0, len(n))
		for k, v := range n {
			switch v.(type) {
			case map[string]any, []any:
				k += "/"
			}
			names = append(names, k)
		}
		sort.Strings(names)
		writeText(w, strings.Join(names, "\n"))
	case []any:
		idx := make([]string, len(n))
		for i := range n {
			idx[i] = strconv.Itoa(i)
		}
		writeText(w, strings.Join(idx, "\n"))
	case nil:
		writeText(w, "")
	case string:
		writeText(w, n)
	default:
		writeText(w, fmt.Sprint(n))
	}
}

// issueToken answers PUT /latest/api/token (MMDS V2 / IMDSv2): a token
// valid for the requested seconds, signed with this VM's key, so it is
// worth nothing on any other VM's listener.
func (h *vmHandler) issueToken(w http.ResponseWriter, r *http.Request) {
	// A proxied request (EC2's rule) is refused: the token is for the VM.
	if r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	ttlStr := r.Header.Get(headerTTL)
	if ttlStr == "" {
		ttlStr = r.Header.Get(headerTTLEC2)
	}
	ttl, err := strconv.Atoi(strings.TrimSpace(ttlStr))
	if err != nil || ttl < 1 || ttl > maxTokenTTL {
		http.Error(w, fmt.Sprintf("%s must be 1-%d", headerTTL, maxTokenTTL), http.StatusBadRequest)
		return
	}
	exp := h.now().Add(time.Duration(ttl) * time.Second).Unix()
	w.Header().Set(headerTTL, strconv.Itoa(ttl))
	writeText(w, h.token(exp))
}

func (h *vmHandler) token(exp int64) string {
	b := binary.BigEndian.AppendUint64(nil, uint64(exp))
	m := hmac.New(sha256.New, h.key)
	m.Write(b)
	b = append(b, m.Sum(nil)[:tokenMACBytes]...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (h *vmHandler) validToken(tok string) bool {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != tokenExpiryByte+tokenMACBytes {
		return false
	}
	exp := int64(binary.BigEndian.Uint64(b[:tokenExpiryByte]))
	m := hmac.New(sha256.New, h.key)
	m.Write(b[:tokenExpiryByte])
	if !hmac.Equal(m.Sum(nil)[:tokenMACBytes], b[tokenExpiryByte:]) {
		return false
	}
	return h.now().Unix() < exp
}

// authorized checks the session token: a token given must be valid; none
// given is fine unless tokens are required (MMDS V2 only).
func (h *vmHandler) authorized(w http.ResponseWriter, r *http.Request) bool {
	tok := r.Header.Get(headerToken)
	if tok == "" {
		tok = r.Header.Get(headerTokenEC2)
	}
	switch {
	case tok != "" && !h.validToken(tok):
		http.Error(w, "invalid or expired token", http.StatusUnauthorized)
		return false
	case tok == "" && h.requireToken:
		http.Error(w, "a session token is required (PUT /latest/api/token)", http.StatusUnauthorized)
		return false
	}
	return true
}
