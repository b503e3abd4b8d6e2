package metadata

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"strings"

	"github.com/containerd/errdefs"
	"sigs.k8s.io/yaml"
)

// Mount is one entry of cloud-init's `mounts` module: a guest device
// mounted at a folder.
type Mount struct {
	Device     string // e.g. /dev/vdb
	MountPoint string
	FSType     string // "auto" when empty
	Options    string // "defaults,nofail" when empty
}

func (m Mount) entry() []string {
	fstype, opts := m.FSType, m.Options
	if fstype == "" {
		fstype = "auto"
	}
	if opts == "" {
		opts = "defaults,nofail"
	}
	return []string{m.Device, m.MountPoint, fstype, opts, "0", "2"}
}

const cloudConfigHeader = "#cloud-config"

// MIME boundary of the multipart vendor-data made by WithMounts.
const mountsBoundary = "==LIQUIDMETAL-VENDOR-DATA=="

// WithMounts returns vendor-data carrying mounts in cloud-init's `mounts`
// list without losing what the caller's own vendor-data says:
//   - none: a new #cloud-config with the list;
//   - a #cloud-config: its keys kept, the entries appended to its own
//     `mounts` list;
//   - a MIME multipart: its parts kept, one #cloud-config part added;
//   - anything else (a script, #include...): a MIME multipart of it and a
//     #cloud-config part.
//
// Entries are written as flow lists, one a line ("- [dev, dir, ...]").
func WithMounts(vendorData []byte, mounts []Mount) ([]byte, error) {
	if len(mounts) == 0 {
		return vendorData, nil
	}
	trimmed := bytes.TrimLeft(vendorData, " \t\r\n")
	switch {
	case len(trimmed) == 0:
		return cloudConfigWithMounts(nil, nil, mounts)
	case bytes.HasPrefix(trimmed, []byte(cloudConfigHeader)):
		var doc map[string]any
		if err := yaml.Unmarshal(vendorData, &doc); err != nil {
			return nil, fmt.Errorf("vendor-data is not valid #cloud-config YAML: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		var own []any
		if v, ok := doc["mounts"]; ok {
			l, ok := v.([]any)
			if !ok && v != nil {
				return nil, fmt.Errorf("vendor-data: mounts is not a list: %w", errdefs.ErrInvalidArgument)
			}
			own = l
			delete(doc, "mounts")
		}
		return cloudConfigWithMounts(doc, own, mounts)
	}
	part, err := cloudConfigWithMounts(nil, nil, mounts)
	if err != nil {
		return nil, err
	}
	if ct, params, ok := multipartOf(vendorData); ok {
		return addPart(vendorData, ct, params, part)
	}
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	if err := w.SetBoundary(mountsBoundary); err != nil {
		return nil, err
	}
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=%q\r\nMIME-Version: 1.0\r\n\r\n", mountsBoundary)
	// cloud-init finds a text/plain part's type from its first line.
	if err := writePart(w, "text/plain", "vendor-data", vendorData); err != nil {
		return nil, err
	}
	if err := writePart(w, "text/cloud-config", "mounts.cfg", part); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// cloudConfigWithMounts renders doc's keys and then the mounts list: the
// caller's own entries first, then ours.
func cloudConfigWithMounts(doc map[string]any, own []any, mounts []Mount) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(cloudConfigHeader + "\n")
	if len(doc) > 0 {
		y, err := yaml.Marshal(doc)
		if err != nil {
			return nil, err
		}
		b.Write(y)
	}
	b.WriteString("mounts:\n")
	for _, e := range own {
		j, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("vendor-data mounts entry: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		fmt.Fprintf(&b, "- %s\n", j)
	}
	for _, m := range mounts {
		j, err := json.Marshal(m.entry())
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "- %s\n", j)
	}
	return b.Bytes(), nil
}

// multipartOf tells whether doc is a MIME multipart message (headers
// first), returning its content type parameters.
func multipartOf(doc []byte) (string, map[string]string, bool) {
	hdrEnd := bytes.Index(doc, []byte("\n\n"))
	if i := bytes.Index(doc, []byte("\r\n\r\n")); i >= 0 && (hdrEnd < 0 || i < hdrEnd) {
		hdrEnd = i
	}
	if hdrEnd < 0 {
		return "", nil, false
	}
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(doc)))
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return "", nil, false
	}
	ct, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(ct, "multipart/") || params["boundary"] == "" {
		return "", nil, false
	}
	return ct, params, true
}

// addPart re-writes a multipart message with one more part.
func addPart(doc []byte, ct string, params map[string]string, part []byte) ([]byte, error) {
	body := doc
	if i := bytes.Index(doc, []byte("\r\n\r\n")); i >= 0 {
		body = doc[i+4:]
	} else if i := bytes.Index(doc, []byte("\n\n")); i >= 0 {
		body = doc[i+2:]
	}
	r := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	if err := w.SetBoundary(params["boundary"]); err != nil {
		return nil, err
	}
	fmt.Fprintf(&b, "Content-Type: %s; boundary=%q\r\nMIME-Version: 1.0\r\n\r\n", ct, params["boundary"])
	for {
		p, err := r.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("vendor-data multipart: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		data, err := io.ReadAll(p)
		if err != nil {
			return nil, fmt.Errorf("vendor-data multipart: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		pw, err := w.CreatePart(p.Header)
		if err != nil {
			return nil, err
		}
		if _, err := pw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := writePart(w, "text/cloud-config", "mounts.cfg", part); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func writePart(w *multipart.Writer, ct, name string, data []byte) error {
	h := textproto.MIMEHeader{}
	h.Set("Content-Type", ct+`; charset="utf-8"`)
	h.Set("MIME-Version", "1.0")
	h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name))
	pw, err := w.CreatePart(h)
	if err != nil {
		return err
	}
	_, err = pw.Write(data)
	return err
}
