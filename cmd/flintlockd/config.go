package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// applyConfig fills every flag the command line did not set from, in order
// of precedence, a FLINTLOCKD_<FLAG> environment variable (dashes become
// underscores) and the YAML config file, whose keys are the flag names.
func applyConfig(fs *pflag.FlagSet, file string) error {
	values := map[string]string{}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("config file: %w", err)
		}
		var doc map[string]any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return fmt.Errorf("config file %s: %w", file, err)
		}
		for k, v := range doc {
			if fs.Lookup(k) == nil {
				return fmt.Errorf("config file %s: unknown setting %q", file, k)
			}
			if list, ok := v.([]any); ok {
				parts := make([]string, len(list))
				for i, e := range list {
					parts[i] = fmt.Sprint(e)
				}
				values[k] = strings.Join(parts, ",")
			} else {
				values[k] = fmt.Sprint(v)
			}
		}
	}
	fs.VisitAll(func(f *pflag.Flag) {
		env := "FLINTLOCKD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			values[f.Name] = v
		}
	})
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		v, ok := values[f.Name]
		if !ok || f.Changed || err != nil {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("setting %s: %w", f.Name, e)
		}
	})
	return err
}
