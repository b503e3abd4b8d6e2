package cloudhypervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// apiRoot prefixes every endpoint.
const apiRoot = "/api/v1/"

// client talks to one Cloud Hypervisor API socket.
type client struct{ sock string }

// call sends an action (body nil for none, files passed along) and
// expects success: 204, or 200 (vmm.shutdown answers 200).
func (c client) call(ctx context.Context, endpoint string, body any, files []*os.File) error {
	_, err := c.do(ctx, "PUT", endpoint, body, files)
	return err
}

func (c client) do(ctx context.Context, method, endpoint string, body any, files []*os.File) ([]byte, error) {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, endpoint, err)
		}
	}
	resp, err := process.Do(ctx, c.sock, method, apiRoot+endpoint, b, files)
	if err != nil {
		return nil, err
	}
	if resp.Status != 200 && resp.Status != 204 {
		return nil, apiError(method, endpoint, resp)
	}
	return resp.Body, nil
}

// get fetches a document.
func (c client) get(ctx context.Context, endpoint string, out any) error {
	b, err := c.do(ctx, "GET", endpoint, nil, nil)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("GET %s: %w", endpoint, err)
	}
	return nil
}

func (c client) info(ctx context.Context) (VMInfo, error) {
	var info VMInfo
	err := c.get(ctx, "vm.info", &info)
	return info, err
}

// apiError explains an error answer. Cloud Hypervisor's body is the chain
// of error messages as a JSON array of strings (older releases answer
// plain text).
func apiError(method, endpoint string, resp process.Response) error {
	msg := strings.TrimSpace(string(resp.Body))
	var chain []string
	if json.Unmarshal(resp.Body, &chain) == nil && len(chain) > 0 {
		msg = strings.Join(chain, ": ")
	}
	return &process.APIError{Method: method, Path: apiRoot + endpoint, Status: resp.Status, Message: msg}
}
