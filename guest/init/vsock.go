package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// vsockMain is ember-vsock: the guest end of a vsock stream, for scripts
// and tests (the image has no socat).
//
//	ember-vsock listen PORT        accept one connection; copy it to stdout and stdin to it
//	ember-vsock connect CID PORT   the same as a client
func vsockMain(args []string) int {
	usage := func() int {
		fmt.Fprintln(os.Stderr, "usage: ember-vsock listen PORT | ember-vsock connect CID PORT")
		return 2
	}
	var fd int
	var err error
	switch {
	case len(args) == 2 && args[0] == "listen":
		port, perr := strconv.ParseUint(args[1], 10, 32)
		if perr != nil {
			return usage()
		}
		fd, err = vsockAccept(uint32(port))
	case len(args) == 3 && args[0] == "connect":
		cid, cerr := strconv.ParseUint(args[1], 10, 32)
		port, perr := strconv.ParseUint(args[2], 10, 32)
		if cerr != nil || perr != nil {
			return usage()
		}
		fd, err = vsockDial(uint32(cid), uint32(port))
	default:
		return usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ember-vsock:", err)
		return 1
	}
	c := os.NewFile(uintptr(fd), "vsock")
	defer c.Close()
	go func() {
		_, _ = io.Copy(c, os.Stdin)
		_ = unix.Shutdown(fd, unix.SHUT_WR)
	}()
	if _, err := io.Copy(os.Stdout, c); err != nil {
		fmt.Fprintln(os.Stderr, "ember-vsock:", err)
		return 1
	}
	return 0
}

// vsockConnectTimeout bounds how long a connect waits for the host.
const vsockConnectTimeout = 30 * time.Second

func vsockAccept(port uint32) (int, error) {
	s, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		return -1, fmt.Errorf("bind port %d: %w", port, err)
	}
	if err := unix.Listen(s, 1); err != nil {
		return -1, fmt.Errorf("listen: %w", err)
	}
	fmt.Fprintf(os.Stderr, "ember-vsock: listening on port %d\n", port)
	fd, _, err := unix.Accept(s)
	if err != nil {
		return -1, fmt.Errorf("accept: %w", err)
	}
	return fd, nil
}

// vsockDial connects without blocking in connect(2): a blocking vsock
// connect is cancelled with EINTR by any signal (Go preempts goroutines
// with SIGURG), and by then the host may have accepted the connection. A
// slow host (nested) gets longer than the kernel's 2 s default.
func vsockDial(cid, port uint32) (int, error) {
	s, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	fail := func(err error) (int, error) {
		unix.Close(s)
		return -1, fmt.Errorf("connect %d:%d: %w", cid, port, err)
	}
	tv := unix.Timeval{Sec: int64(vsockConnectTimeout / time.Second)}
	if err := unix.SetsockoptTimeval(s, unix.AF_VSOCK, unix.SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv); err != nil {
		return fail(err)
	}
	err = unix.Connect(s, &unix.SockaddrVM{CID: cid, Port: port})
	if err != nil && err != unix.EINPROGRESS {
		return fail(err)
	}
	// The kernel ends a pending connect itself after the timeout above;
	// the poll's own bound is a backstop a little beyond it.
	deadline := time.Now().Add(vsockConnectTimeout + 5*time.Second)
	for err != nil {
		left := time.Until(deadline)
		if left <= 0 {
			return fail(unix.ETIMEDOUT)
		}
		fds := []unix.PollFd{{Fd: int32(s), Events: unix.POLLOUT}}
		n, perr := unix.Poll(fds, int(left/time.Millisecond)+1)
		if perr == unix.EINTR || n == 0 {
			continue
		}
		if perr != nil {
			return fail(perr)
		}
		soerr, gerr := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case gerr != nil:
			return fail(gerr)
		case soerr != 0:
			return fail(unix.Errno(soerr))
		}
		err = nil
	}
	if err := unix.SetNonblock(s, false); err != nil {
		return fail(err)
	}
	return s, nil
}
