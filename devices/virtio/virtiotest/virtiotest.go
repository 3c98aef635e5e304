// Package virtiotest is a guest-side virtio driver for unit tests: it
// drives a device through the virtio-mmio registers as Linux would, builds
// descriptor chains (good and deliberately broken) in fake guest memory
// and reads back what the device put in the used ring. No KVM needed.
package virtiotest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ember-vmm/ember/devices/irq"
	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/vmm/memory"
)

// Notifier is a channel-backed virtio.Notifier with eventfd semantics:
// signals pile up into one wake-up.
type Notifier chan struct{}

// NewNotifier returns a Notifier.
func NewNotifier() Notifier { return make(Notifier, 1) }

// Wait blocks until signalled.
func (n Notifier) Wait() (uint64, error) { <-n; return 1, nil }

// Drain drops a pending signal.
func (n Notifier) Drain() {
	select {
	case <-n:
	default:
	}
}

// Signal wakes the waiter (or the next one).
func (n Notifier) Signal() error {
	select {
	case n <- struct{}{}:
	default:
	}
	return nil
}

// Layout of the fake guest RAM: rings from RingBase, data buffers from
// DataBase. RAMSize is the whole RAM.
const (
	RAMSize  = 16 << 20
	RingBase = 0x10000
	DataBase = 0x100000
)

// Driver is one device behind virtio-mmio, driven like a guest would.
type Driver struct {
	T    testing.TB
	Mem  *memory.Memory
	MMIO *virtio.MMIO
	Dev  virtio.Device
	Irqs chan struct{}
	// Hold makes Publish leave the notification to Notify, so several
	// chains reach the device as one batch.
	Hold   bool
	queues []*queue
	next   uint64 // bump allocator for data buffers
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

type queue struct {
	size             uint16
	desc, avail, use uint64
	freeHead         uint16
	availIdx         uint16
	lastUsed         uint16
	// Descriptors published by Submit and not yet seen used, by head: a
	// driver must not rewrite them while the device may still read them.
	inflight map[uint16]int
	busy     int
}

// New puts dev behind a transport over fresh fake RAM and starts it.
func New(t testing.TB, dev virtio.Device) *Driver {
	t.Helper()
	mem, err := memory.NewFake([][2]uint64{{0, RAMSize}})
	if err != nil {
		t.Fatal(err)
	}
	d := &Driver{T: t, Mem: mem, Dev: dev, Irqs: make(chan struct{}, 1024), next: DataBase}
	var ns []virtio.Notifier
	for range dev.QueueMaxSizes() {
		ns = append(ns, NewNotifier())
	}
	line := irq.Func(func() {
		select {
		case d.Irqs <- struct{}{}:
		default:
		}
	})
	d.MMIO, err = virtio.NewMMIO(dev, mem, line, ns, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.MMIO.Start(ctx, func(f func() error) {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := f(); err != nil {
				d.mu.Lock()
				d.errs = append(d.errs, err)
				d.mu.Unlock()
			}
		}()
	})
	t.Cleanup(d.Close)
	return d
}

// Close stops the device's workers and reports errors they returned.
func (d *Driver) Close() {
	d.cancel()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		d.T.Errorf("virtiotest: device workers did not stop within 10s")
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := errors.Join(d.errs...); err != nil {
		d.T.Errorf("virtiotest: worker error: %v", err)
	}
	d.errs = nil
}

// Read32 and Write32 access a transport register.
func (d *Driver) Read32(off uint64) uint32 {
	var b [4]byte
	d.MMIO.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (d *Driver) Write32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.MMIO.Write(off, b[:])
}

// Config reads n bytes of the device configuration at off.
func (d *Driver) Config(off uint64, n int) []byte {
	b := make([]byte, n)
	d.MMIO.Read(virtio.RegConfig+off, b)
	return b
}

// Features reads the 64 feature bits the device offers.
func (d *Driver) Features() uint64 {
	d.Write32(virtio.RegDeviceFeatSel, 0)
	lo := d.Read32(virtio.RegDeviceFeatures)
	d.Write32(virtio.RegDeviceFeatSel, 1)
	return uint64(d.Read32(virtio.RegDeviceFeatures))<<32 | uint64(lo)
}

// Init runs the driver initialization (§3.1.1) with the given features,
// sets up every queue with size min(max, sizes[i] or 16) and sets
// DRIVER_OK. It fails the test if the device refuses.
func (d *Driver) Init(features uint64, sizes ...uint16) {
	d.T.Helper()
	if got := d.Read32(virtio.RegMagic); got != virtio.MagicValue {
		d.T.Fatalf("magic %#x", got)
	}
	d.Write32(virtio.RegStatus, 0)
	// Interrupts from before the reset say nothing about the new rings.
	for len(d.Irqs) > 0 {
		<-d.Irqs
	}
	d.Write32(virtio.RegStatus, virtio.StatusAcknowledge)
	d.Write32(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	d.Write32(virtio.RegDriverFeatSel, 0)
	d.Write32(virtio.RegDriverFeatures, uint32(features))
	d.Write32(virtio.RegDriverFeatSel, 1)
	d.Write32(virtio.RegDriverFeatures, uint32(features>>32))
	st := uint32(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	d.Write32(virtio.RegStatus, st)
	if d.Read32(virtio.RegStatus)&virtio.StatusFeaturesOK == 0 {
		d.T.Fatalf("device refused features %#x", features)
	}
	d.queues = nil
	base := uint64(RingBase)
	for i := range d.Dev.QueueMaxSizes() {
		d.Write32(virtio.RegQueueSel, uint32(i))
		max := uint16(d.Read32(virtio.RegQueueNumMax))
		size := uint16(16)
		if i < len(sizes) && sizes[i] != 0 {
			size = sizes[i]
		}
		size = min(size, max)
		q := &queue{size: size, desc: base, inflight: map[uint16]int{}}
		q.avail = q.desc + 16*uint64(size)
		q.use = (q.avail + 6 + 2*uint64(size) + 3) &^ 3
		base = (q.use + 6 + 8*uint64(size) + 4095) &^ 4095
		// Fresh rings, as a driver allocates them.
		if _, err := d.Mem.WriteAt(make([]byte, base-q.desc), int64(q.desc)); err != nil {
			d.T.Fatal(err)
		}
		d.SetupQueue(i, size, q.desc, q.avail, q.use)
		d.queues = append(d.queues, q)
	}
	d.Write32(virtio.RegStatus, st|virtio.StatusDriverOK)
	if s := d.Read32(virtio.RegStatus); s&virtio.StatusNeedsReset != 0 {
		d.T.Fatalf("device needs reset right after DRIVER_OK (status %#x)", s)
	}
}

// SetupQueue programs queue i's registers and marks it ready.
func (d *Driver) SetupQueue(i int, size uint16, desc, avail, used uint64) {
	d.Write32(virtio.RegQueueSel, uint32(i))
	d.Write32(virtio.RegQueueNum, uint32(size))
	d.Write32(virtio.RegQueueDescLow, uint32(desc))
	d.Write32(virtio.RegQueueDescHigh, uint32(desc>>32))
	d.Write32(virtio.RegQueueAvailLow, uint32(avail))
	d.Write32(virtio.RegQueueAvailHigh, uint32(avail>>32))
	d.Write32(virtio.RegQueueUsedLow, uint32(used))
	d.Write32(virtio.RegQueueUsedHigh, uint32(used>>32))
	d.Write32(virtio.RegQueueReady, 1)
}

// Alloc returns guest memory for n bytes of data, filled with b if given.
func (d *Driver) Alloc(n int, b []byte) uint64 {
	gpa := d.next
	d.next = (d.next + uint64(n) + 15) &^ 15
	if d.next > RAMSize {
		d.next = DataBase
		gpa = d.next
		d.next = (d.next + uint64(n) + 15) &^ 15
	}
	if b != nil {
		if _, err := d.Mem.WriteAt(b, int64(gpa)); err != nil {
			d.T.Fatal(err)
		}
	}
	return gpa
}

// Desc is one descriptor as the driver writes it.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Descriptor flags.
const (
	Next     = 1
	Write    = 2
	Indirect = 4
)

// SetDesc writes descriptor i of queue q.
func (d *Driver) SetDesc(q int, i uint16, desc Desc) {
	d.writeDesc(d.queues[q].desc+16*uint64(i), desc)
}

// WriteTable writes descs as an indirect table and returns its address.
func (d *Driver) WriteTable(descs []Desc) uint64 {
	gpa := d.Alloc(16*len(descs), nil)
	for i, x := range descs {
		d.writeDesc(gpa+16*uint64(i), x)
	}
	return gpa
}

func (d *Driver) writeDesc(gpa uint64, x Desc) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], x.Addr)
	binary.LittleEndian.PutUint32(b[8:], x.Len)
	binary.LittleEndian.PutUint16(b[12:], x.Flags)
	binary.LittleEndian.PutUint16(b[14:], x.Next)
	if _, err := d.Mem.WriteAt(b[:], int64(gpa)); err != nil {
		d.T.Fatal(err)
	}
}

// Publish puts head in queue q's available ring and notifies the device.
func (d *Driver) Publish(q int, head uint16) {
	vq := d.queues[q]
	// used_event (read by the device only with VIRTIO_F_EVENT_IDX): an
	// interrupt for every buffer after the ones already taken.
	d.put16(vq.avail+4+2*uint64(vq.size), vq.lastUsed)
	d.put16(vq.avail+4+2*uint64(vq.availIdx%vq.size), head)
	vq.availIdx++
	d.put16(vq.avail+2, vq.availIdx)
	if !d.Hold {
		d.Notify(q)
	}
}

// Notify tells the device that queue q has new buffers.
func (d *Driver) Notify(q int) { d.Write32(virtio.RegQueueNotify, uint32(q)) }

// SetAvailIdx writes queue q's avail index directly (to break the rules).
func (d *Driver) SetAvailIdx(q int, idx uint16) {
	d.put16(d.queues[q].avail+2, idx)
	d.Write32(virtio.RegQueueNotify, uint32(q))
}

// Buf is a device-readable buffer (Data) or a device-writable one of
// WriteLen bytes.
type Buf struct {
	Data     []byte
	WriteLen uint32
}

// Request is a chain the device has returned.
type Request struct {
	Head    uint16
	Written uint32
	// Out holds the device-writable buffers' contents, in order.
	Out  [][]byte
	outs []Desc
}

// Bytes returns the first Written bytes of the writable buffers.
func (r *Request) Bytes() []byte {
	var b []byte
	for _, o := range r.Out {
		b = append(b, o...)
	}
	return b[:min(len(b), int(r.Written))]
}

// Submit builds a chain of bufs in queue q starting at descriptor
// freeHead (direct descriptors, or one indirect table when indirect is
// set), publishes it and returns a handle to wait on.
func (d *Driver) Submit(q int, indirect bool, bufs ...Buf) *Request {
	vq := d.queues[q]
	var descs []Desc
	for i, b := range bufs {
		x := Desc{Flags: 0}
		if b.Data != nil {
			x.Addr, x.Len = d.Alloc(len(b.Data), b.Data), uint32(len(b.Data))
		} else {
			x.Addr, x.Len, x.Flags = d.Alloc(int(b.WriteLen), make([]byte, b.WriteLen)), b.WriteLen, Write
		}
		if i < len(bufs)-1 {
			x.Flags |= Next
			if indirect {
				x.Next = uint16(i + 1)
			} else {
				x.Next = (vq.freeHead + uint16(i) + 1) % vq.size
			}
		}
		descs = append(descs, x)
	}
	n := len(descs)
	if indirect {
		n = 1
	}
	if vq.busy+n > int(vq.size) {
		d.T.Fatalf("virtiotest: queue %d: %d of %d descriptors still with the device; wait for used buffers or use a bigger queue", q, vq.busy, vq.size)
	}
	vq.busy += n
	head := vq.freeHead
	vq.inflight[head] += n
	if indirect {
		d.SetDesc(q, head, Desc{Addr: d.WriteTable(descs), Len: uint32(16 * len(descs)), Flags: Indirect})
		vq.freeHead = (vq.freeHead + 1) % vq.size
	} else {
		for i, x := range descs {
			d.SetDesc(q, (head+uint16(i))%vq.size, x)
		}
		vq.freeHead = (vq.freeHead + uint16(len(descs))) % vq.size
	}
	r := &Request{Head: head}
	for _, x := range descs {
		if x.Flags&Write != 0 {
			r.outs = append(r.outs, x)
		}
	}
	d.Publish(q, head)
	return r
}

// Wait waits (up to 10s) for the device to return the next used element
// of queue q, which must be r's chain, and fills r.
func (d *Driver) Wait(q int, r *Request) *Request {
	d.T.Helper()
	head, n, err := d.NextUsed(q, 10*time.Second)
	if err != nil {
		d.T.Fatal(err)
	}
	if head != r.Head {
		d.T.Fatalf("used head %d, want %d", head, r.Head)
	}
	r.Written = n
	for _, x := range r.outs {
		b := make([]byte, x.Len)
		if _, err := d.Mem.ReadAt(b, int64(x.Addr)); err != nil {
			d.T.Fatal(err)
		}
		r.Out = append(r.Out, b)
	}
	return r
}

// Do submits bufs on queue q and waits for the device to finish them.
func (d *Driver) Do(q int, bufs ...Buf) *Request {
	d.T.Helper()
	return d.Wait(q, d.Submit(q, false, bufs...))
}

// NextUsed waits up to timeout for the next used element of queue q. It
// reads the used index atomically, as the device writes it, which also
// orders the element's bytes before our reads; it wakes on interrupts and
// polls as well, so a suppressed or coalesced interrupt cannot stall it.
func (d *Driver) NextUsed(q int, timeout time.Duration) (uint16, uint32, error) {
	vq := d.queues[q]
	deadline := time.Now().Add(timeout)
	for d.get16(vq.use+2) == vq.lastUsed {
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("queue %d: no used buffer within %v (status %#x)", q, timeout, d.Read32(virtio.RegStatus))
		}
		select {
		case <-d.Irqs:
			d.Write32(virtio.RegInterruptACK, d.Read32(virtio.RegInterruptStat))
		case <-time.After(time.Millisecond):
		}
	}
	e := vq.use + 4 + 8*uint64(vq.lastUsed%vq.size)
	id, n := d.get32(e), d.get32(e+4)
	vq.lastUsed++
	if k, ok := vq.inflight[uint16(id)]; ok {
		vq.busy -= k
		delete(vq.inflight, uint16(id))
	}
	return uint16(id), n, nil
}

// UsedIdx is queue q's used index as the device last wrote it.
func (d *Driver) UsedIdx(q int) uint16 { return d.get16(d.queues[q].use + 2) }

// NeedsReset reports DEVICE_NEEDS_RESET in the status register.
func (d *Driver) NeedsReset() bool {
	return d.Read32(virtio.RegStatus)&virtio.StatusNeedsReset != 0
}

// WaitNeedsReset waits up to 10s for the device to set DEVICE_NEEDS_RESET.
func (d *Driver) WaitNeedsReset() {
	d.T.Helper()
	for deadline := time.Now().Add(10 * time.Second); !d.NeedsReset(); {
		if time.Now().After(deadline) {
			d.T.Fatalf("device did not set DEVICE_NEEDS_RESET")
		}
		time.Sleep(time.Millisecond)
	}
}

// put16 and get16 access ring fields atomically, as the device does.
func (d *Driver) put16(gpa uint64, v uint16) {
	b, err := d.Mem.Slice(gpa&^3, 4)
	if err != nil {
		d.T.Fatal(err)
	}
	memory.Store16(b, int(gpa&3), v)
}

func (d *Driver) get16(gpa uint64) uint16 {
	b, err := d.Mem.Slice(gpa&^3, 4)
	if err != nil {
		d.T.Fatal(err)
	}
	return memory.Load16(b, int(gpa&3))
}

func (d *Driver) get32(gpa uint64) uint32 {
	var b [4]byte
	if _, err := d.Mem.ReadAt(b[:], int64(gpa)); err != nil {
		d.T.Fatal(err)
	}
	return binary.LittleEndian.Uint32(b[:])
}
