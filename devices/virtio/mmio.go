package virtio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/ember-vmm/ember/devices/irq"
)

// virtio-mmio register offsets (virtio 1.2 §4.2.2).
const (
	RegMagic          = 0x000
	RegVersion        = 0x004
	RegDeviceID       = 0x008
	RegVendorID       = 0x00c
	RegDeviceFeatures = 0x010
	RegDeviceFeatSel  = 0x014
	RegDriverFeatures = 0x020
	RegDriverFeatSel  = 0x024
	RegQueueSel       = 0x030
	RegQueueNumMax    = 0x034
	RegQueueNum       = 0x038
	RegQueueReady     = 0x044
	RegQueueNotify    = 0x050
	RegInterruptStat  = 0x060
	RegInterruptACK   = 0x064
	RegStatus         = 0x070
	RegQueueDescLow   = 0x080
	RegQueueDescHigh  = 0x084
	RegQueueAvailLow  = 0x090
	RegQueueAvailHigh = 0x094
	RegQueueUsedLow   = 0x0a0
	RegQueueUsedHigh  = 0x0a4
	RegSHMSel         = 0x0ac
	RegSHMLenLow      = 0x0b0
	RegSHMLenHigh     = 0x0b4
	RegSHMBaseLow     = 0x0b8
	RegSHMBaseHigh    = 0x0bc
	RegConfigGen      = 0x0fc
	RegConfig         = 0x100

	MagicValue = 0x74726976 // "virt"
	VendorID   = 0x52424d45 // "EMBR"
)

// Device status bits (§2.1).
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 64
	StatusFailed      = 128
)

// Interrupt status bits (§4.2.2).
const (
	intUsedBuffer   = 1
	intConfigChange = 2
)

// Notifier carries a queue's notifications from the driver to its worker:
// an eventfd that KVM signals on the doorbell write (ioeventfd), or
// anything else with the same behaviour. A Notifier that also has a
// Drain method has pending signals dropped when the device resets.
type Notifier interface {
	Wait() (uint64, error)
	Signal() error
}

// MMIO is the virtio-mmio transport of one device: the register window a
// vCPU reads and writes, feature negotiation, queue setup and the worker
// lifecycle. Register accesses may come from several vCPUs at once.
type MMIO struct {
	dev    Device
	mem    Memory
	line   irq.Line
	notify []Notifier
	log    *slog.Logger
	stats  *Stats

	mu         sync.Mutex
	status     uint32
	devFeatSel uint32
	drvFeatSel uint32
	drvFeat    uint64
	queueSel   uint32
	queues     []*Queue
	qmax       []uint16
	qready     []bool
	shmSel     uint32

	isr        atomic.Uint32
	needsReset atomic.Bool

	runCtx  context.Context
	goFn    func(func() error)
	cancel  func()
	workers sync.WaitGroup
}

// NewMMIO puts dev behind a virtio-mmio transport. notify has one Notifier
// per queue; line is the device's interrupt.
func NewMMIO(dev Device, mem Memory, line irq.Line, notify []Notifier, log *slog.Logger) (*MMIO, error) {
	qmax := dev.QueueMaxSizes()
	if len(notify) != len(qmax) {
		return nil, fmt.Errorf("virtio: %d notifiers for %d queues", len(notify), len(qmax))
	}
	t := &MMIO{dev: dev, mem: mem, line: line, notify: notify, log: log, stats: dev.Stats(), qmax: qmax}
	for range qmax {
		t.queues = append(t.queues, NewQueue(mem))
		t.qready = append(t.qready, false)
	}
	return t, nil
}

// Start gives the transport the context and worker group of a running
// machine; activation starts device workers there, and they return when
// ctx ends or the driver resets the device.
func (t *MMIO) Start(ctx context.Context, goFn func(func() error)) {
	t.mu.Lock()
	t.runCtx, t.goFn = ctx, goFn
	t.mu.Unlock()
}

// wake gets every worker out of its wait.
func (t *MMIO) wake() {
	for _, n := range t.notify {
		_ = n.Signal()
	}
}

func (t *MMIO) guestFault(format string, args ...any) {
	t.stats.GuestFaults.Add(1)
	t.log.Warn(fmt.Sprintf(format, args...))
}

// Read implements bus.Device.
func (t *MMIO) Read(off uint64, data []byte) {
	if off >= RegConfig {
		t.mu.Lock()
		t.dev.ReadConfig(off-RegConfig, data)
		t.mu.Unlock()
		return
	}
	clear(data)
	if len(data) != 4 || off%4 != 0 {
		t.guestFault("virtio-mmio: %d-byte read at register %#x (registers are 32-bit)", len(data), off)
		return
	}
	binary.LittleEndian.PutUint32(data, t.readReg(off))
}

func (t *MMIO) readReg(off uint64) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	q := t.selected()
	switch off {
	case RegMagic:
		return MagicValue
	case RegVersion:
		return 2
	case RegDeviceID:
		return t.dev.Type()
	case RegVendorID:
		return VendorID
	case RegDeviceFeatures:
		f := t.offered()
		switch t.devFeatSel {
		case 0:
			return uint32(f)
		case 1:
			return uint32(f >> 32)
		}
		return 0
	case RegQueueNumMax:
		if q < 0 {
			return 0
		}
		return uint32(t.qmax[q])
	case RegQueueReady:
		if q < 0 || !t.qready[q] {
			return 0
		}
		return 1
	case RegInterruptStat:
		return t.isr.Load()
	case RegStatus:
		s := t.status
		if t.needsReset.Load() {
			s |= StatusNeedsReset
		}
		return s
	case RegSHMLenLow, RegSHMLenHigh, RegSHMBaseLow, RegSHMBaseHigh:
		return ^uint32(0) // no shared memory regions
	case RegConfigGen:
		return 0
	}
	return 0
}

// selected is the index of the queue QueueSel names, or -1.
func (t *MMIO) selected() int {
	if int(t.queueSel) < len(t.queues) {
		return int(t.queueSel)
	}
	return -1
}

func (t *MMIO) offered() uint64 {
	return t.dev.Features() | FeatureVersion1 | FeatureIndirectDesc | FeatureEventIdx
}

// Write implements bus.Device.
func (t *MMIO) Write(off uint64, data []byte) {
	if off >= RegConfig {
		t.mu.Lock()
		t.dev.WriteConfig(off-RegConfig, data)
		t.mu.Unlock()
		return
	}
	if len(data) != 4 || off%4 != 0 {
		t.guestFault("virtio-mmio: %d-byte write at register %#x (registers are 32-bit)", len(data), off)
		return
	}
	v := binary.LittleEndian.Uint32(data)
	if off == RegQueueNotify {
		// Reached only without an ioeventfd for this queue (or with a
		// value no ioeventfd matches).
		if int(v) < len(t.notify) {
			_ = t.notify[v].Signal()
		} else {
			t.guestFault("virtio-mmio: notify for queue %d of %d", v, len(t.notify))
		}
		return
	}
	if off == RegInterruptACK {
		t.isr.And(^v)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if off == RegStatus {
		t.setStatus(v)
		return
	}
	q := t.selected()
	queueReg := off == RegQueueNum || off == RegQueueReady || (off >= RegQueueDescLow && off <= RegQueueUsedHigh)
	if queueReg && (q < 0 || t.status&StatusDriverOK != 0 || (off != RegQueueReady && t.qready[q])) {
		// §4.2.2.3: queue registers change only for a selected, existing
		// queue that is not live.
		t.guestFault("virtio-mmio: write %#x to queue register %#x of queue %d (absent or in use)", v, off, t.queueSel)
		return
	}
	switch off {
	case RegDeviceFeatSel:
		t.devFeatSel = v
	case RegDriverFeatSel:
		t.drvFeatSel = v
	case RegDriverFeatures:
		if t.status&StatusFeaturesOK != 0 {
			t.guestFault("virtio-mmio: features written after FEATURES_OK")
			return
		}
		switch t.drvFeatSel {
		case 0:
			t.drvFeat = t.drvFeat&^0xffffffff | uint64(v)
		case 1:
			t.drvFeat = t.drvFeat&0xffffffff | uint64(v)<<32
		}
	case RegQueueSel:
		t.queueSel = v
	case RegQueueNum:
		t.queues[q].Size = uint16(min(v, 0xffff))
		if v > 0xffff {
			t.queues[q].Size = 0 // refused at activation
		}
	case RegQueueReady:
		t.qready[q] = v == 1
	case RegQueueDescLow:
		setLow(&t.queues[q].Desc, v)
	case RegQueueDescHigh:
		setHigh(&t.queues[q].Desc, v)
	case RegQueueAvailLow:
		setLow(&t.queues[q].Avail, v)
	case RegQueueAvailHigh:
		setHigh(&t.queues[q].Avail, v)
	case RegQueueUsedLow:
		setLow(&t.queues[q].Used, v)
	case RegQueueUsedHigh:
		setHigh(&t.queues[q].Used, v)
	case RegSHMSel:
		t.shmSel = v
	default:
		t.guestFault("virtio-mmio: write %#x to read-only or unknown register %#x", v, off)
	}
}

func setLow(p *uint64, v uint32)  { *p = *p&^0xffffffff | uint64(v) }
func setHigh(p *uint64, v uint32) { *p = *p&0xffffffff | uint64(v)<<32 }

// setStatus follows the driver through initialization (§3.1.1); called
// with mu held.
func (t *MMIO) setStatus(v uint32) {
	if v == 0 {
		t.reset()
		return
	}
	if v&^t.status&StatusFeaturesOK != 0 {
		if t.drvFeat&^t.offered() != 0 || t.drvFeat&FeatureVersion1 == 0 {
			// Leaving FEATURES_OK unset tells the driver we refuse (§3.1.1).
			t.guestFault("virtio-mmio: driver features %#x not a subset of %#x with VERSION_1", t.drvFeat, t.offered())
			v &^= StatusFeaturesOK
		}
	}
	start := v&^t.status&StatusDriverOK != 0
	t.status = v &^ StatusNeedsReset
	if start {
		if t.status&StatusFeaturesOK == 0 {
			t.guestFault("virtio-mmio: DRIVER_OK without FEATURES_OK")
			t.markNeedsReset()
			return
		}
		if err := t.activate(); err != nil {
			t.guestFault("virtio-mmio: activate: %v", err)
			t.markNeedsReset()
		}
	}
}

// activate checks the queues and starts the device; mu is held.
func (t *MMIO) activate() error {
	eventIdx, indirect := t.drvFeat&FeatureEventIdx != 0, t.drvFeat&FeatureIndirectDesc != 0
	for i, q := range t.queues {
		if !t.qready[i] {
			continue
		}
		if err := q.Activate(t.qmax[i], eventIdx, indirect); err != nil {
			return fmt.Errorf("queue %d: %w", i, err)
		}
	}
	if t.goFn == nil {
		return errors.New("machine not running")
	}
	ctx, cancel := context.WithCancel(t.runCtx)
	// When the machine ends, wake the workers so they see it; a reset
	// does that itself (stopWorkers).
	stopWake := context.AfterFunc(ctx, t.wake)
	t.cancel = func() {
		stopWake()
		cancel()
		t.wake()
	}
	a := &Activation{
		Queues:    t.queues,
		Features:  t.drvFeat,
		Notified:  t.notified,
		Interrupt: t.interrupt,
		Kick:      func(i int) { _ = t.notify[i].Signal() },
		Fault: func(err error) {
			t.guestFault("virtio: %v", err)
			t.markNeedsReset()
		},
		Go: func(f func() error) {
			t.workers.Add(1)
			t.goFn(func() error {
				defer t.workers.Done()
				return f()
			})
		},
	}
	return t.dev.Activate(ctx, a)
}

// notified waits for the driver to notify queue i.
func (t *MMIO) notified(ctx context.Context, i int) error {
	if _, err := t.notify[i].Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// interrupt raises the used-buffer interrupt if queue i's driver wants it.
func (t *MMIO) interrupt(i int) {
	if t.queues[i].NeedsInterrupt() {
		t.raise(intUsedBuffer)
	}
}

func (t *MMIO) raise(bit uint32) {
	t.isr.Or(bit)
	t.stats.Interrupts.Add(1)
	t.line.Trigger()
}

// markNeedsReset sets DEVICE_NEEDS_RESET and tells the driver (§2.1.2).
func (t *MMIO) markNeedsReset() {
	if !t.needsReset.Swap(true) {
		t.raise(intConfigChange)
	}
}

// QueueIndices are every ready queue's indices (Queue.Indices) by name,
// "qN_avail", "qN_seen", "qN_used"; for a machine whose workers stopped.
func (t *MMIO) QueueIndices() map[string]uint64 {
	m := map[string]uint64{}
	for i, q := range t.queues {
		if avail, seen, used, ok := q.Indices(); ok {
			m[fmt.Sprintf("q%d_avail", i)] = uint64(avail)
			m[fmt.Sprintf("q%d_seen", i)] = uint64(seen)
			m[fmt.Sprintf("q%d_used", i)] = uint64(used)
		}
	}
	return m
}

// NeedsReset reports whether the device is marked DEVICE_NEEDS_RESET.
func (t *MMIO) NeedsReset() bool { return t.needsReset.Load() }

// reset stops the workers and returns device and transport to their
// initial state (§2.4); mu is held.
func (t *MMIO) reset() {
	t.stopWorkers()
	t.dev.Reset()
	for i, q := range t.queues {
		q.Reset()
		t.qready[i] = false
	}
	t.status, t.drvFeat, t.devFeatSel, t.drvFeatSel, t.queueSel = 0, 0, 0, 0, 0
	t.isr.Store(0)
	t.needsReset.Store(false)
}

func (t *MMIO) stopWorkers() {
	if t.cancel == nil {
		return
	}
	t.cancel()
	t.workers.Wait()
	t.cancel = nil
	// Wake-ups meant for the old workers must not reach the next ones.
	for _, n := range t.notify {
		if d, ok := n.(interface{ Drain() }); ok {
			d.Drain()
		}
	}
}
