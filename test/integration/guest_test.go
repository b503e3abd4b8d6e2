package integration

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/liquidmetal-go/liquidmetal/test/framework"
)

// kernelMessage is one kernel log line on the serial console. The kernel
// writes it whenever it logs, also in the middle of a line the guest's
// init is printing.
var kernelMessage = regexp.MustCompile(`\[ *[0-9]+\.[0-9]{6}\] [^\n]*\n`)

// consoleDoc returns the cloud-init document the test guest's init printed
// on its console between "--- NAME ---" and "--- end NAME ---" (see
// internal/testimages/guest-init.sh), without the serial line's CRs and
// the kernel messages interleaved with it.
func consoleDoc(console, name string) (string, bool) {
	s := kernelMessage.ReplaceAllString(strings.ReplaceAll(console, "\r", ""), "")
	begin, end := "--- "+name+" ---\n", "\n--- end "+name+" ---"
	i := strings.Index(s, begin)
	if i < 0 {
		return "", false
	}
	s = s[i+len(begin):]
	j := strings.Index(s, end)
	if j < 0 {
		return "", false
	}
	return s[:j], true
}

// guestMeta is the meta-data a guest received, as cloud-init reads it.
type guestMeta struct {
	InstanceID    string `json:"instance_id"`
	LocalHostname string `json:"local_hostname"`
	VMHost        string `json:"vm_host"`
	Platform      string `json:"platform"`
	ClusterName   string `json:"cluster_name"`
}

// cloudConfig is the part of a #cloud-config user-data the stand-ins use.
type cloudConfig struct {
	WriteFiles []struct {
		Path     string `json:"path"`
		Content  string `json:"content"`
		Encoding string `json:"encoding"`
	} `json:"write_files"`
	RunCmd []any `json:"runcmd"`
}

func parseCloudConfig(userData string) (*cloudConfig, error) {
	if !strings.Contains(userData, "#cloud-config") {
		return nil, fmt.Errorf("user-data is not a #cloud-config:\n%s", framework.Tail(userData, 10))
	}
	var c cloudConfig
	if err := yaml.Unmarshal([]byte(userData), &c); err != nil {
		return nil, fmt.Errorf("user-data: %w", err)
	}
	return &c, nil
}

// file returns the content of a write_files entry, decoded.
func (c *cloudConfig) file(path string) ([]byte, error) {
	for _, f := range c.WriteFiles {
		if f.Path != path {
			continue
		}
		switch f.Encoding {
		case "":
			return []byte(f.Content), nil
		case "b64", "base64":
			return base64.StdEncoding.DecodeString(f.Content)
		default:
			return nil, fmt.Errorf("%s: encoding %q", path, f.Encoding)
		}
	}
	return nil, fmt.Errorf("user-data writes no %s", path)
}

// kubeadmDoc returns the document of kind from a multi-document kubeadm
// configuration file, as a generic map.
func kubeadmDoc(file []byte, kind string) (raw string, doc map[string]any, err error) {
	for _, d := range strings.Split(string(file), "\n---") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			return "", nil, err
		}
		if m["kind"] == kind {
			return strings.TrimPrefix(strings.TrimSpace(d), "---\n"), m, nil
		}
	}
	return "", nil, fmt.Errorf("no %s in the kubeadm configuration", kind)
}

// nested reads a string at a path of nested maps.
func nested(m map[string]any, path ...string) string {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = mm[p]
	}
	s, _ := v.(string)
	return s
}

// kubeletArg returns a kubelet extra argument of a nodeRegistration, in
// kubeadm v1beta4's list form or v1beta3's map form.
func kubeletArg(doc map[string]any, name string) string {
	nr, _ := doc["nodeRegistration"].(map[string]any)
	switch args := nr["kubeletExtraArgs"].(type) {
	case []any:
		for _, a := range args {
			if am, ok := a.(map[string]any); ok && am["name"] == name {
				s, _ := am["value"].(string)
				return s
			}
		}
	case map[string]any:
		s, _ := args[name].(string)
		return s
	}
	return ""
}

var jinjaMeta = regexp.MustCompile(`\{\{\s*ds\.meta_data\.(\w+)\s*\}\}`)

// renderJinja substitutes {{ ds.meta_data.KEY }} with the guest's
// meta-data, as cloud-init's jinja templating does for "## template: jinja"
// user-data; an unknown key is an error.
func renderJinja(s string, meta map[string]any) (string, error) {
	var missing []string
	out := jinjaMeta.ReplaceAllStringFunc(s, func(m string) string {
		key := jinjaMeta.FindStringSubmatch(m)[1]
		v, ok := meta[key]
		if !ok {
			missing = append(missing, key)
			return m
		}
		return fmt.Sprint(v)
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("meta-data has no %v for %q", missing, s)
	}
	return out, nil
}
