package virtio

import (
	"context"
	"sync/atomic"
)

// Device types (virtio 1.2 §5).
const (
	TypeNet     = 1
	TypeBlock   = 2
	TypeConsole = 3
	TypeRNG     = 4
	TypeP9      = 9
	TypeVsock   = 19
	TypeFS      = 26
)

// Feature bits every device may offer (§6).
const (
	FeatureIndirectDesc = 1 << 28
	FeatureEventIdx     = 1 << 29
	FeatureVersion1     = 1 << 32
)

// Device is a virtio device model behind a transport.
type Device interface {
	// Type is the virtio device ID (§5).
	Type() uint32
	// Features are the device-specific feature bits offered; the
	// transport adds VERSION_1, INDIRECT_DESC and EVENT_IDX.
	Features() uint64
	// QueueMaxSizes has one entry per virtqueue: its largest size.
	QueueMaxSizes() []uint16
	// ReadConfig and WriteConfig access the device configuration space
	// (§4.2.2 offset 0x100 on); out-of-range reads return zeros.
	ReadConfig(off uint64, p []byte)
	WriteConfig(off uint64, p []byte)
	// Activate starts the device once the driver set DRIVER_OK. Workers
	// it needs are started with a.Go and must return when ctx ends.
	Activate(ctx context.Context, a *Activation) error
	// Reset returns the device to its initial state; its workers have
	// already returned.
	Reset()
	// Stats are the device's counters.
	Stats() *Stats
}

// Activation is what a device gets when the driver starts it.
type Activation struct {
	// Queues holds every queue; those the driver did not enable are not
	// Ready.
	Queues []*Queue
	// Notified blocks until the driver notifies queue i or ctx ends.
	Notified func(ctx context.Context, i int) error
	// Interrupt raises the used-buffer interrupt for queue i if the
	// driver wants one for what was pushed.
	Interrupt func(i int)
	// Kick wakes queue i's worker as a driver notification would, for
	// work that arrives from the host side (a socket with data).
	Kick func(i int)
	// Fault reports that the guest broke the rules: the device stops and
	// is marked DEVICE_NEEDS_RESET.
	Fault func(err error)
	// Features are the negotiated feature bits.
	Features uint64
	// Go starts a worker the transport waits for on reset.
	Go func(func() error)
}

// Stats are a device's counters, safe for concurrent use.
type Stats struct {
	Requests     atomic.Uint64
	BytesRead    atomic.Uint64 // guest to device
	BytesWritten atomic.Uint64 // device to guest
	Errors       atomic.Uint64 // requests that failed on the host side
	GuestFaults  atomic.Uint64 // malformed requests and broken queue rules
	Interrupts   atomic.Uint64
}

// Snapshot returns the counters by name, for reports.
func (s *Stats) Snapshot() map[string]uint64 {
	return map[string]uint64{
		"requests": s.Requests.Load(), "bytes_read": s.BytesRead.Load(), "bytes_written": s.BytesWritten.Load(),
		"errors": s.Errors.Load(), "guest_faults": s.GuestFaults.Load(), "interrupts": s.Interrupts.Load(),
	}
}

// Serve is the usual queue worker: it hands every notification of queue i
// to handle until ctx ends. handle drains the queue; an error from it is a
// guest fault.
func Serve(ctx context.Context, a *Activation, i int, handle func(q *Queue) error) error {
	// The driver notifies after making buffers available (§2.7.13.4), so
	// the worker waits for that before it looks at the rings.
	q := a.Queues[i]
	for a.Notified(ctx, i) == nil {
		if err := handle(q); err != nil {
			a.Fault(err)
			return nil
		}
	}
	return nil
}

// ServeChains is Serve for devices that complete each chain at once: on
// every notification it hands each available chain to handle, returns it
// to the driver with the length handle wrote, and interrupts once for the
// batch.
func ServeChains(ctx context.Context, a *Activation, i int, handle func(c *Chain) uint32) error {
	return Serve(ctx, a, i, func(q *Queue) error {
		defer a.Interrupt(i)
		for {
			c, err := q.Pop()
			if err != nil || c == nil {
				return err
			}
			q.Push(c, handle(c))
		}
	})
}
