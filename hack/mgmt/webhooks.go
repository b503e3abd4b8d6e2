package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// rewriteWebhooks reads the multi-document YAML files and writes to w
// their Mutating- and ValidatingWebhookConfigurations (and, with crds,
// their CustomResourceDefinitions), every webhook client config pointing
// at baseURL+path with caFile as its CA bundle instead of at an in-cluster
// Service. Other documents are dropped. cert-manager's CA injection
// annotation goes too: nothing here runs cert-manager.
func rewriteWebhooks(w io.Writer, caFile, baseURL string, crds bool, files []string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	bundle := base64.StdEncoding.EncodeToString(ca)
	baseURL = strings.TrimRight(baseURL, "/")
	for _, f := range files {
		docs, err := readDocs(f)
		if err != nil {
			return err
		}
		for _, d := range docs {
			kind, _ := d["kind"].(string)
			switch {
			case kind == "MutatingWebhookConfiguration" || kind == "ValidatingWebhookConfiguration":
				hooks, _ := d["webhooks"].([]any)
				for _, h := range hooks {
					hm, ok := h.(map[string]any)
					if !ok {
						return fmt.Errorf("%s: a webhook of %s is not an object", f, name(d))
					}
					if err := rewriteClientConfig(hm, baseURL, bundle); err != nil {
						return fmt.Errorf("%s: %s: %w", f, name(d), err)
					}
				}
			case kind == "CustomResourceDefinition" && crds:
				if wh := nested(d, "spec", "conversion", "webhook"); wh != nil {
					if err := rewriteClientConfig(wh, baseURL, bundle); err != nil {
						return fmt.Errorf("%s: %s: %w", f, name(d), err)
					}
				}
			default:
				continue
			}
			if ann := nested(d, "metadata", "annotations"); ann != nil {
				delete(ann, "cert-manager.io/inject-ca-from")
			}
			out, err := yaml.Marshal(d)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(w, "---\n%s", out); err != nil {
				return err
			}
		}
	}
	return nil
}

// rewriteClientConfig turns hook's clientConfig.service into a URL on
// baseURL with the same path.
func rewriteClientConfig(hook map[string]any, baseURL, bundle string) error {
	cc := nested(hook, "clientConfig")
	if cc == nil {
		return errors.New("no clientConfig")
	}
	path := "/"
	if svc, ok := cc["service"].(map[string]any); ok {
		if p, ok := svc["path"].(string); ok && p != "" {
			path = p
		}
	} else if _, ok := cc["url"]; !ok {
		return errors.New("clientConfig has neither service nor url")
	}
	delete(cc, "service")
	cc["url"] = baseURL + path
	cc["caBundle"] = bundle
	return nil
}

// nested returns the object at keys below m, or nil.
func nested(m map[string]any, keys ...string) map[string]any {
	for _, k := range keys {
		next, ok := m[k].(map[string]any)
		if !ok {
			return nil
		}
		m = next
	}
	return m
}

func name(d map[string]any) string {
	if md := nested(d, "metadata"); md != nil {
		if n, ok := md["name"].(string); ok {
			return fmt.Sprintf("%v %s", d["kind"], n)
		}
	}
	return fmt.Sprint(d["kind"])
}

// readDocs returns the non-empty YAML documents of a file as objects.
func readDocs(file string) ([]map[string]any, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var docs []map[string]any
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if len(m) > 0 {
			docs = append(docs, m)
		}
	}
}
