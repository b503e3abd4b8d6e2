package flcli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/yaml"

	"github.com/liquidmetal-go/liquidmetal/api/services/microvm/v1alpha1"
	"github.com/liquidmetal-go/liquidmetal/api/types"
)

// Output formats of -o.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

func checkFormat(f string) error {
	switch f {
	case formatTable, formatJSON, formatYAML:
		return nil
	}
	return fmt.Errorf("-o %q: want table, json or yaml", f)
}

// jsonOptions: proto field names, zero values shown (state PENDING is 0).
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}

// printMessage prints one proto message as JSON or YAML.
func printMessage(w io.Writer, format string, m proto.Message) error {
	compact, err := jsonOptions.Marshal(m)
	if err != nil {
		return err
	}
	// protojson varies its spacing on purpose; indent it evenly ourselves.
	var buf bytes.Buffer
	if err := json.Indent(&buf, compact, "", "  "); err != nil {
		return err
	}
	js := buf.Bytes()
	if format == formatYAML {
		y, err := yaml.JSONToYAML(js)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", js)
	return err
}

// printVMs prints microVMs: a table, or for JSON/YAML one MicroVM when
// single is set and otherwise a ListMicroVMsResponse.
func printVMs(w io.Writer, format string, single bool, vms ...*types.MicroVM) error {
	switch format {
	case formatJSON, formatYAML:
		if single && len(vms) == 1 {
			return printMessage(w, format, vms[0])
		}
		return printMessage(w, format, &v1alpha1.ListMicroVMsResponse{Microvm: vms})
	}
	sorted := slices.Clone(vms)
	slices.SortStableFunc(sorted, func(a, b *types.MicroVM) int {
		if c := strings.Compare(a.GetSpec().GetNamespace(), b.GetSpec().GetNamespace()); c != 0 {
			return c
		}
		return strings.Compare(a.GetSpec().GetId(), b.GetSpec().GetId())
	})
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tUID\tSTATE\tPROVIDER\tAGE")
	now := time.Now()
	for _, vm := range sorted {
		s := vm.GetSpec()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n",
			dash(s.GetNamespace()), dash(s.GetId()), dash(s.GetUid()),
			stateText(vm), dash(s.GetProvider()), age(s, now))
	}
	return tw.Flush()
}

// stateText is the state, with the failure reason when FAILED.
func stateText(vm *types.MicroVM) string {
	st := vm.GetStatus()
	text := st.GetState().String()
	if st.GetState() == types.MicroVMStatus_FAILED && st.GetFailureReason() != "" {
		text += "(" + st.GetFailureReason() + ")"
	}
	return text
}

func age(s *types.MicroVMSpec, now time.Time) string {
	if s.GetCreatedAt() == nil {
		return "-"
	}
	return duration.HumanDuration(now.Sub(s.GetCreatedAt().AsTime()))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// vmName is "namespace/name (uid)" for progress lines.
func vmName(vm *types.MicroVM) string {
	s := vm.GetSpec()
	return fmt.Sprintf("%s/%s (%s)", s.GetNamespace(), s.GetId(), s.GetUid())
}
