// Package bus routes guest port-I/O and MMIO accesses to devices.
//
// A device never returns an error to the vCPU: guest mistakes are logged and
// counted by the device itself. Accesses no device claims are counted here,
// read as all-ones, and otherwise ignored.
package bus

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// Device is anything that answers guest reads and writes in an address range.
// offset is relative to the base the device was registered at; len(data) is
// the access width (1, 2, 4 or 8 for I/O, up to 8 for MMIO).
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// Errors returned by Register.
var (
	ErrOverlap  = errors.New("range overlaps a registered device")
	ErrZeroSize = errors.New("range has zero size")
	ErrOverflow = errors.New("range wraps around the address space")
)

type entry struct {
	base, size uint64
	dev        Device
	name       string
	// accesses counts the exits this device served.
	accesses *atomic.Uint64
}

// Bus is a set of non-overlapping address ranges, each owned by one device.
// Register is meant to happen before the vCPUs run; lookups take a read lock.
type Bus struct {
	name        string
	mu          sync.RWMutex
	entries     []entry // sorted by base
	unclaimed   atomic.Uint64
	onUnclaimed func(addr uint64, size int, write bool)
}

// New returns an empty bus; name ("pio", "mmio") appears in messages.
func New(name string) *Bus { return &Bus{name: name} }

// OnUnclaimed sets a hook called for every access no device claims (after it
// is counted). The hook must be cheap and must rate-limit any logging itself.
func (b *Bus) OnUnclaimed(f func(addr uint64, size int, write bool)) { b.onUnclaimed = f }

// Register claims [base, base+size) for d.
func (b *Bus) Register(name string, base, size uint64, d Device) error {
	if size == 0 {
		return fmt.Errorf("%s bus: %s at %#x: %w", b.name, name, base, ErrZeroSize)
	}
	if base+size < base {
		return fmt.Errorf("%s bus: %s at %#x+%#x: %w", b.name, name, base, size, ErrOverflow)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.entries {
		if base < e.base+e.size && e.base < base+size {
			return fmt.Errorf("%s bus: %s at %#x+%#x and %s at %#x+%#x: %w",
				b.name, name, base, size, e.name, e.base, e.size, ErrOverlap)
		}
	}
	b.entries = append(b.entries, entry{base: base, size: size, dev: d, name: name, accesses: new(atomic.Uint64)})
	sort.Slice(b.entries, func(i, j int) bool { return b.entries[i].base < b.entries[j].base })
	return nil
}

func (b *Bus) find(addr uint64) (Device, uint64, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	es := b.entries
	i := sort.Search(len(es), func(i int) bool { return es[i].base+es[i].size > addr })
	if i < len(es) && es[i].base <= addr {
		es[i].accesses.Add(1)
		return es[i].dev, addr - es[i].base, true
	}
	return nil, 0, false
}

// Read dispatches a guest read. An unclaimed read fills data with 0xff.
func (b *Bus) Read(addr uint64, data []byte) {
	if d, off, ok := b.find(addr); ok {
		d.Read(off, data)
		return
	}
	for i := range data {
		data[i] = 0xff
	}
	b.miss(addr, len(data), false)
}

// Write dispatches a guest write. An unclaimed write is dropped.
func (b *Bus) Write(addr uint64, data []byte) {
	if d, off, ok := b.find(addr); ok {
		d.Write(off, data)
		return
	}
	b.miss(addr, len(data), true)
}

func (b *Bus) miss(addr uint64, size int, write bool) {
	b.unclaimed.Add(1)
	if b.onUnclaimed != nil {
		b.onUnclaimed(addr, size, write)
	}
}

// Unclaimed reports how many accesses hit no device.
func (b *Bus) Unclaimed() uint64 { return b.unclaimed.Load() }

// Accesses reports, per device name, how many accesses (each one VM exit)
// it served; devices that served none are left out, and accesses no
// device claimed are under "unclaimed".
func (b *Bus) Accesses() map[string]uint64 {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := map[string]uint64{}
	for _, e := range b.entries {
		if n := e.accesses.Load(); n > 0 {
			out[e.name] += n
		}
	}
	if n := b.unclaimed.Load(); n > 0 {
		out["unclaimed"] = n
	}
	return out
}
