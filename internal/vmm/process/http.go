package process

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// maxResponse bounds the body read from a VMM API response.
const maxResponse = 8 << 20

// Response is a VMM API answer.
type Response struct {
	Status int
	Body   []byte
}

// Do sends one HTTP/1.1 request to the API server listening on the unix
// socket at sock (a path of any length) and reads its answer; the
// connection is not reused. body, when not nil, is sent as JSON. files are
// passed with the request in an SCM_RIGHTS message, as Cloud Hypervisor
// takes the descriptors of devices it cannot open itself (macvtap). ctx
// bounds the whole exchange.
func Do(ctx context.Context, sock, method, path string, body []byte, files []*os.File) (Response, error) {
	conn, err := DialUnix(ctx, sock)
	if err != nil {
		return Response{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(err error) (Response, error) {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return Response{}, fmt.Errorf("%s %s: %w", method, path, err)
	}

	var head bytes.Buffer
	fmt.Fprintf(&head, "%s %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n", method, path)
	if body != nil {
		fmt.Fprintf(&head, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	head.WriteString("\r\n")

	// The descriptors travel with the first bytes; the rest is plain.
	msg := head.Bytes()
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		n, _, err := conn.WriteMsgUnix(msg, unix.UnixRights(fds...), nil)
		if err != nil {
			return fail(err)
		}
		msg = msg[n:]
	}
	if _, err := conn.Write(append(msg, body...)); err != nil {
		return fail(err)
	}

	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fail(err)
	}
	return Response{Status: resp.StatusCode, Body: b}, nil
}

// APIError is an error answer of a VMM API.
type APIError struct {
	Method, Path string
	Status       int
	// Message is the VMM's own explanation, from the body.
	Message string
}

func (e *APIError) Error() string {
	s := e.Method + " " + e.Path + ": " + strconv.Itoa(e.Status) + " " + http.StatusText(e.Status)
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}
