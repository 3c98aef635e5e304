// Package hostio gives the VMM host-side stdin and stdout it can always
// stop waiting on. A read from a terminal or a write to a pipe nobody
// drains blocks a thread in the kernel, and Go can interrupt neither on a
// blocking descriptor. Reopening the same pipe, FIFO or terminal through
// /proc/self/fd yields a new open file description of its own, which can be
// non-blocking (and so managed by the runtime's poller, with deadlines and
// a Close that wakes readers) without touching the flags of the descriptor
// shared with the shell.
package hostio

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// pollable reports whether f is a pipe, FIFO or character device (a
// terminal): the files that can block and can be reopened.
func pollable(f *os.File) bool {
	st, err := f.Stat()
	if err != nil {
		return false
	}
	m := st.Mode()
	return m&os.ModeNamedPipe != 0 || m&os.ModeCharDevice != 0
}

func reopen(f *os.File, flags int) (*os.File, bool) {
	if !pollable(f) {
		return nil, false
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), flags|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, false
	}
	return os.NewFile(uintptr(fd), f.Name()), true
}

// Output returns a writer for f that honours write deadlines when f is a
// pipe, FIFO or terminal; otherwise (a regular file, /dev/null, a socket)
// f itself. Close it when done; f stays open.
func Output(f *os.File) *os.File {
	if g, ok := reopen(f, unix.O_WRONLY); ok {
		return g
	}
	return f
}

// Input is a reader over a host file whose Read returns io.EOF once Close
// is called, from any goroutine, without closing the file it reads.
type Input struct {
	r      io.Reader
	own    *os.File // the reopened descriptor, closed by Close
	mu     sync.Mutex
	closed bool
}

// NewInput reads f. For a pipe, FIFO or terminal, Close interrupts a
// blocked Read; for other files reads do not block for long anyway.
func NewInput(f *os.File) *Input {
	if g, ok := reopen(f, unix.O_RDONLY); ok {
		return &Input{r: g, own: g}
	}
	return &Input{r: f}
}

// Read reads from the file; after Close it returns io.EOF.
func (in *Input) Read(p []byte) (int, error) {
	in.mu.Lock()
	closed := in.closed
	in.mu.Unlock()
	if closed {
		return 0, io.EOF
	}
	n, err := in.r.Read(p)
	if err != nil {
		in.mu.Lock()
		if in.closed {
			err = io.EOF
		}
		in.mu.Unlock()
	}
	return n, err
}

// Close makes Read return io.EOF, waking one that is blocked.
func (in *Input) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return nil
	}
	in.closed = true
	if in.own != nil {
		return in.own.Close()
	}
	return nil
}
