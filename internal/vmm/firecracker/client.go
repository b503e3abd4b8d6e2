package firecracker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// client talks to one Firecracker API socket.
type client struct{ sock string }

// faultBody is Firecracker's error document.
type faultBody struct {
	FaultMessage string `json:"fault_message"`
}

// call sends body (nil for none) and expects 204 No Content.
func (c client) call(ctx context.Context, method, path string, body any) error {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	resp, err := process.Do(ctx, c.sock, method, path, b, nil)
	if err != nil {
		return err
	}
	if resp.Status != 204 {
		return apiError(method, path, resp)
	}
	return nil
}

// info is GET /.
func (c client) info(ctx context.Context) (InstanceInfo, error) {
	resp, err := process.Do(ctx, c.sock, "GET", "/", nil, nil)
	if err != nil {
		return InstanceInfo{}, err
	}
	if resp.Status != 200 {
		return InstanceInfo{}, apiError("GET", "/", resp)
	}
	var info InstanceInfo
	if err := json.Unmarshal(resp.Body, &info); err != nil {
		return InstanceInfo{}, fmt.Errorf("GET /: %w", err)
	}
	return info, nil
}

func apiError(method, path string, resp process.Response) error {
	var f faultBody
	msg := strings.TrimSpace(string(resp.Body))
	if json.Unmarshal(resp.Body, &f) == nil && f.FaultMessage != "" {
		msg = f.FaultMessage
	}
	return &process.APIError{Method: method, Path: path, Status: resp.Status, Message: msg}
}
