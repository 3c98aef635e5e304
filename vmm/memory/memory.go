// Package memory holds guest RAM: anonymous host mappings placed at guest
// physical addresses, with bounds-checked accessors. Nothing outside this
// package and vmm/kvm touches the mappings through unsafe pointers.
package memory

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Layout constants for x86-64 guests.
const (
	// HoleStart is where the 32-bit MMIO hole begins: RAM above this guest
	// physical address moves to HighStart (like QEMU's and Firecracker's layout).
	HoleStart = 0xC000_0000
	// HighStart is where RAM resumes above 4 GiB.
	HighStart = 0x1_0000_0000
	// PageSize is the guest page size used for alignment.
	PageSize = 4096
)

// ErrOutOfRange reports an access that is not entirely inside one RAM region.
var ErrOutOfRange = errors.New("guest address out of RAM")

// Region is one contiguous run of guest RAM.
type Region struct {
	GPA  uint64
	Data []byte // host mapping, len == size
}

// Size returns the region's size in bytes.
func (r Region) Size() uint64 { return uint64(len(r.Data)) }

// HostAddr returns the host virtual address of the mapping, for KVM.
func (r Region) HostAddr() uintptr {
	// The slice is backed by an mmap that lives until Memory.Close, never by
	// the Go heap, so its address is stable.
	return uintptr(unsafe.Pointer(unsafe.SliceData(r.Data)))
}

// Memory is the guest's RAM.
type Memory struct {
	regions []Region
	size    uint64
	mapped  bool
}

// Layout returns the guest physical regions for size bytes of RAM, split
// around the 32-bit hole.
func Layout(size uint64) [][2]uint64 {
	if size <= HoleStart {
		return [][2]uint64{{0, size}}
	}
	return [][2]uint64{{0, HoleStart}, {HighStart, size - HoleStart}}
}

// New maps size bytes of anonymous memory as guest RAM. size must be a
// positive multiple of the page size.
func New(size uint64) (*Memory, error) {
	if size == 0 || size%PageSize != 0 {
		return nil, fmt.Errorf("memory size %d: must be a positive multiple of %d", size, PageSize)
	}
	m := &Memory{size: size, mapped: true}
	for _, l := range Layout(size) {
		data, err := unix.Mmap(-1, 0, int(l[1]), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("map %d MiB of guest RAM: %w", l[1]>>20, err)
		}
		// Transparent huge pages cut EPT/NPT misses during boot; advisory only.
		_ = unix.Madvise(data, unix.MADV_HUGEPAGE)
		m.regions = append(m.regions, Region{GPA: l[0], Data: data})
	}
	return m, nil
}

// NewFake returns memory backed by ordinary Go slices, for tests that need no
// KVM. Regions are laid out as for New.
func NewFake(size uint64) *Memory {
	m := &Memory{size: size}
	for _, l := range Layout(size) {
		m.regions = append(m.regions, Region{GPA: l[0], Data: make([]byte, l[1])})
	}
	return m
}

// Regions returns the RAM regions in ascending guest address order.
func (m *Memory) Regions() []Region { return m.regions }

// Size returns the total RAM size.
func (m *Memory) Size() uint64 { return m.size }

// Close unmaps the RAM. It is safe to call more than once.
func (m *Memory) Close() error {
	var first error
	if m.mapped {
		for _, r := range m.regions {
			if err := unix.Munmap(r.Data); err != nil && first == nil {
				first = err
			}
		}
	}
	m.regions = nil
	m.mapped = false
	return first
}

// Slice returns the n bytes of RAM at gpa. The range must lie inside one
// region; overflow and out-of-range requests return ErrOutOfRange.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if gpa >= r.GPA && gpa-r.GPA <= r.Size() {
			off := gpa - r.GPA
			if n > r.Size()-off {
				break
			}
			return r.Data[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("%w: %#x+%#x", ErrOutOfRange, gpa, n)
}

// ReadAt copies len(p) bytes at guest address off into p; all or nothing.
func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative address", ErrOutOfRange)
	}
	s, err := m.Slice(uint64(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, s), nil
}

// WriteAt copies p into guest RAM at off; all or nothing.
func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative address", ErrOutOfRange)
	}
	s, err := m.Slice(uint64(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(s, p), nil
}
