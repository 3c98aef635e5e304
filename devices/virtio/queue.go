// Package virtio implements the device side of virtio 1.2: split
// virtqueues (§2.7) with indirect descriptors and event-index suppression,
// descriptor chains validated whole before a device sees a byte, and the
// virtio-mmio transport (§4.2). Device models live in subpackages and read
// and write requests through io.Reader and io.Writer over a chain: they
// never see a guest address.
package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ember-vmm/ember/vmm/memory"
)

// Memory is guest RAM as the queue needs it: Slice returns the n bytes at
// gpa, or an error when they are not all inside RAM (vmm/memory.Memory).
type Memory interface {
	Slice(gpa, n uint64) ([]byte, error)
}

// Descriptor flags (§2.7.5).
const (
	descNext     = 1
	descWrite    = 2
	descIndirect = 4
)

// availNoInterrupt is the driver's "no interrupts, please" flag (§2.7.6).
const availNoInterrupt = 1

// MaxQueueSize is the largest split queue virtio allows (§2.7).
const MaxQueueSize = 32768

const descSize = 16

// Errors a guest causes by breaking the queue rules. Any of them makes the
// transport set DEVICE_NEEDS_RESET.
var (
	ErrQueueNotReady = errors.New("queue not ready")
	ErrQueueLayout   = errors.New("bad queue layout")
	ErrDescIndex     = errors.New("descriptor index out of range")
	ErrDescLoop      = errors.New("descriptor chain too long (a loop?)")
	ErrDescOrder     = errors.New("device-readable descriptor after a device-writable one")
	ErrDescRange     = errors.New("descriptor buffer outside guest RAM")
	ErrDescIndirect  = errors.New("bad indirect descriptor table")
	ErrChainLength   = errors.New("descriptor chain longer than 4 GiB")
	ErrAvailIndex    = errors.New("driver published more buffers than the queue holds")
)

// Queue is one split virtqueue, driven by the device side. Its methods are
// called from one goroutine at a time (the queue's worker); Pop and Push
// are safe against the driver running concurrently on other CPUs.
type Queue struct {
	mem Memory
	// Set by the driver through the transport before it marks the queue
	// ready.
	Size               uint16
	Desc, Avail, Used  uint64
	eventIdx, indirect bool

	desc, avail, used []byte // validated views of the rings
	lastAvail         uint16 // next avail entry the device consumes
	usedIdx           uint16 // next used entry the device fills
	signalled         uint16 // used index at the last interrupt decision
}

// NewQueue returns a queue over mem with no rings yet.
func NewQueue(mem Memory) *Queue { return &Queue{mem: mem} }

// Activate checks the ring layout the driver configured (§2.7: a power of
// two size no larger than max, aligned rings inside guest RAM) and
// prepares the queue. eventIdx and indirect say which of those features
// were negotiated.
func (q *Queue) Activate(max uint16, eventIdx, indirect bool) error {
	n := uint64(q.Size)
	switch {
	case n == 0 || n > uint64(max) || n&(n-1) != 0:
		return fmt.Errorf("%w: size %d (want a power of two up to %d)", ErrQueueLayout, n, max)
	case q.Desc%16 != 0 || q.Avail%2 != 0 || q.Used%4 != 0:
		return fmt.Errorf("%w: rings at %#x/%#x/%#x are misaligned", ErrQueueLayout, q.Desc, q.Avail, q.Used)
	}
	// The ring indices are accessed through their aligned 32-bit words
	// (memory.Load16): the views reach to the next multiple of four,
	// which with aligned rings is still inside the same RAM region.
	var err error
	if q.desc, err = q.mem.Slice(q.Desc, descSize*n); err != nil {
		return fmt.Errorf("%w: descriptor table: %w", ErrQueueLayout, err)
	}
	if q.avail, err = q.mem.Slice(q.Avail, pad4(q.Avail, 6+2*n)); err != nil {
		return fmt.Errorf("%w: available ring: %w", ErrQueueLayout, err)
	}
	if q.used, err = q.mem.Slice(q.Used, pad4(q.Used, 6+8*n)); err != nil {
		return fmt.Errorf("%w: used ring: %w", ErrQueueLayout, err)
	}
	q.eventIdx, q.indirect = eventIdx, indirect
	q.lastAvail, q.usedIdx, q.signalled = 0, 0, 0
	return nil
}

// Ready reports whether Activate succeeded since the last Reset.
func (q *Queue) Ready() bool { return q.desc != nil }

// Reset forgets the rings (§2.1: on device reset).
func (q *Queue) Reset() {
	q.Size, q.Desc, q.Avail, q.Used = 0, 0, 0, 0
	q.desc, q.avail, q.used = nil, nil, nil
	q.lastAvail, q.usedIdx, q.signalled = 0, 0, 0
}

// pad4 is n grown so that start+n is a multiple of four.
func pad4(start, n uint64) uint64 { return (start+n+3)&^3 - start }

func le16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }

// availIdx is the driver's avail index, read atomically: the ring entries
// it publishes are read after it (§2.7.13).
func (q *Queue) availIdx() uint16 { return memory.Load16(q.avail, 2) }

// Indices are the driver's avail index and the device's next avail and
// used entries, for reports of a stopped machine (a driver waiting on a
// buffer the device never saw shows avail > seen); ok is false for a
// queue not set up.
func (q *Queue) Indices() (avail, seen, used uint16, ok bool) {
	if !q.Ready() {
		return 0, 0, 0, false
	}
	return q.availIdx(), q.lastAvail, q.usedIdx, true
}

// Pop takes the next available chain, validated whole. It returns (nil,
// nil) when the queue is empty. An error means the driver broke the rules;
// the queue is then unusable until reset.
func (q *Queue) Pop() (*Chain, error) {
	if !q.Ready() {
		return nil, ErrQueueNotReady
	}
	idx := q.availIdx()
	if idx == q.lastAvail && q.eventIdx {
		// Ask for a notification at the next buffer, then look again: the
		// driver may have added one before it could see our request.
		q.setAvailEvent(q.lastAvail)
		idx = q.availIdx()
	}
	if idx == q.lastAvail {
		return nil, nil
	}
	if idx-q.lastAvail > q.Size {
		return nil, fmt.Errorf("%w: avail index %d, device at %d, size %d", ErrAvailIndex, idx, q.lastAvail, q.Size)
	}
	slot := uint64(q.lastAvail % q.Size)
	// Entries share 32-bit words with their neighbours, which the driver
	// may be writing: read them as atomically as the index.
	head := memory.Load16(q.avail, 4+2*int(slot))
	c := &Chain{Head: head}
	if err := q.walk(c, head); err != nil {
		return nil, err
	}
	q.lastAvail++
	return c, nil
}

// walk validates the chain at head and collects its buffers (§2.7.5,
// §2.7.5.3): indices in range, at most Size hops in the table and as many
// as an indirect table holds, readable before writable, buffers in RAM,
// indirect tables not nested and not chained.
func (q *Queue) walk(c *Chain, head uint16) error {
	table, n := q.desc, uint32(q.Size)
	i := uint32(head)
	indirect := false
	for hops := uint32(0); ; hops++ {
		if i >= n {
			return fmt.Errorf("%w: %d (table of %d)", ErrDescIndex, i, n)
		}
		if hops >= n {
			return fmt.Errorf("%w: more than %d descriptors", ErrDescLoop, n)
		}
		d := table[descSize*i : descSize*(i+1)]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := le16(d[12:])
		next := le16(d[14:])
		if flags&descIndirect != 0 {
			switch {
			case !q.indirect:
				return fmt.Errorf("%w: indirect descriptor without VIRTIO_F_INDIRECT_DESC", ErrDescIndirect)
			case indirect:
				return fmt.Errorf("%w: indirect table inside an indirect table", ErrDescIndirect)
			case flags&descNext != 0:
				return fmt.Errorf("%w: indirect descriptor with NEXT set", ErrDescIndirect)
			case length == 0 || length%descSize != 0 || length/descSize > MaxQueueSize:
				return fmt.Errorf("%w: table length %d", ErrDescIndirect, length)
			}
			t, err := q.mem.Slice(addr, uint64(length))
			if err != nil {
				return fmt.Errorf("%w: table: %w", ErrDescRange, err)
			}
			table, n, i, indirect = t, length/descSize, 0, true
			hops = ^uint32(0) // the loop's increment starts the table at 0 hops
			continue
		}
		if err := c.add(q.mem, addr, length, flags&descWrite != 0); err != nil {
			return err
		}
		if flags&descNext == 0 {
			return nil
		}
		i = uint32(next)
	}
}

// Push returns a chain to the driver with written bytes of device-writable
// data (§2.7.8). The caller then asks NeedsInterrupt whether to notify.
func (q *Queue) Push(c *Chain, written uint32) {
	if !q.Ready() {
		return
	}
	slot := uint64(q.usedIdx % q.Size)
	e := q.used[4+8*slot : 4+8*slot+8]
	binary.LittleEndian.PutUint32(e[0:], uint32(c.Head))
	binary.LittleEndian.PutUint32(e[4:], written)
	// The element is visible before the index that publishes it: the
	// atomic store orders them.
	q.usedIdx++
	memory.Store16(q.used, 2, q.usedIdx)
}

// NeedsInterrupt reports whether the driver wants an interrupt for the
// buffers pushed since the last call: its used_event with event indices
// (§2.7.10), else the NO_INTERRUPT flag.
func (q *Queue) NeedsInterrupt() bool {
	if !q.Ready() {
		return false
	}
	// Push's atomic store of the used index is a full barrier: the
	// driver's suppression state is read after it, or both sides could
	// wait for each other.
	old, cur := q.signalled, q.usedIdx
	q.signalled = cur
	if q.eventIdx {
		ev := memory.Load16(q.avail, 4+2*int(q.Size))
		return cur-ev-1 < cur-old
	}
	return old != cur && memory.Load16(q.avail, 0)&availNoInterrupt == 0
}

// setAvailEvent publishes avail_event (§2.7.10).
func (q *Queue) setAvailEvent(v uint16) {
	memory.Store16(q.used, 4+8*int(q.Size), v)
}
