package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/liquidmetal-go/liquidmetal/internal/vmm/process"
)

// qmpClient is a minimal QEMU Machine Protocol client: one connection, one
// command at a time, asynchronous events skipped. QEMU serves one client per
// monitor at a time, so callers keep connections short.
type qmpClient struct {
	conn net.Conn
	r    *bufio.Reader
	stop func() bool // unregisters the ctx watcher
}

// qmpError is an error reply: {"error": {"class": ..., "desc": ...}}.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return fmt.Sprintf("qmp %s: %s", e.Class, e.Desc) }

// qmpMessage is any message from the server: a greeting, a reply or an event.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	Event  string          `json:"event"`
}

// dialQMP connects to the QMP socket at path, reads the greeting and leaves
// capabilities negotiation mode. ctx bounds the whole life of the client:
// when it is done, pending and later calls fail.
func dialQMP(ctx context.Context, path string) (_ *qmpClient, err error) {
	conn, err := process.DialUnix(ctx, path)
	if err != nil {
		return nil, err
	}
	c := &qmpClient{conn: conn, r: bufio.NewReader(conn)}
	// Once ctx is done (and so ctx.Err is set) blocked I/O fails.
	c.stop = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	greeting, err := c.read()
	if err != nil {
		return nil, fmt.Errorf("qmp greeting: %w", c.ctxErr(ctx, err))
	}
	if greeting.QMP == nil {
		return nil, errors.New("qmp greeting: not a QMP server")
	}
	if err := c.execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		return nil, err
	}
	return c, nil
}

// execute runs command with args (nil for none) and decodes its return
// value into out (nil to ignore it).
func (c *qmpClient) execute(ctx context.Context, command string, args, out any) error {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{command, args}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", command, c.ctxErr(ctx, err))
	}
	for {
		m, err := c.read()
		if err != nil {
			return fmt.Errorf("qmp %s: %w", command, c.ctxErr(ctx, err))
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			return fmt.Errorf("qmp %s: %w", command, m.Error)
		case m.Return != nil:
			if out == nil {
				return nil
			}
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", command, err)
			}
			return nil
		}
	}
}

func (c *qmpClient) read() (qmpMessage, error) {
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return qmpMessage{}, io.ErrUnexpectedEOF
		}
		return qmpMessage{}, err
	}
	var m qmpMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return qmpMessage{}, fmt.Errorf("bad message %q: %w", line, err)
	}
	return m, nil
}

// ctxErr prefers the context's error over the deadline error it caused.
func (c *qmpClient) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// Close closes the connection.
func (c *qmpClient) Close() {
	if c.stop != nil {
		c.stop()
	}
	_ = c.conn.Close()
}

// qmpStatus is the reply of query-status.
type qmpStatus struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// qmpDo dials the socket, runs one command and hangs up.
func qmpDo(ctx context.Context, sock, command string, args, out any) error {
	c, err := dialQMP(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.execute(ctx, command, args, out)
}
