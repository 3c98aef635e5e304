// Package eventfd wraps Linux eventfds (eventfd(2)) as pollable files: a
// goroutine waiting in Wait parks in the Go runtime's poller rather than
// blocking a thread, and Close wakes it, so whoever owns an EventFD can
// always stop its reader. KVM signals them for guest notifications
// (ioeventfd) and reads them to inject interrupts (irqfd).
package eventfd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// EventFD is one eventfd.
type EventFD struct {
	f  *os.File
	fd int
}

// New creates a non-blocking, close-on-exec eventfd with a zero count.
func New() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	// A non-blocking descriptor becomes a pollable os.File.
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// FD is the descriptor, for KVM_IRQFD and KVM_IOEVENTFD.
func (e *EventFD) FD() int { return e.fd }

// Signal adds one to the count. A count at its maximum (which would take
// 2^64-2 signals nobody waited for) is not an error: the waiter has not
// run yet and will see a non-zero count.
func (e *EventFD) Signal() error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	_, err := e.f.Write(b[:])
	if errors.Is(err, unix.EAGAIN) {
		return nil
	}
	return err
}

// Wait blocks until the count is non-zero, resets it and returns it. After
// Close it returns os.ErrClosed.
func (e *EventFD) Wait() (uint64, error) {
	var b [8]byte
	if _, err := e.f.Read(b[:]); err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// Drain resets the count to zero without waiting.
func (e *EventFD) Drain() {
	var b [8]byte
	_, _ = unix.Read(e.fd, b[:])
}

// Close closes the eventfd and wakes a goroutine in Wait.
func (e *EventFD) Close() error { return e.f.Close() }
