// Package memory holds guest RAM: anonymous host mappings placed at guest
// physical addresses, with bounds-checked accessors. Nothing outside this
// package and vmm/kvm touches the mappings through unsafe pointers.
package memory

import (
	"errors"
	"fmt"
	"math"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PageSize is the guest page size: region starts and sizes are multiples.
const PageSize = 4096

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

// checkLayout validates regions given as (guest address, size) pairs:
// page-aligned, non-empty, ascending and disjoint.
func checkLayout(layout [][2]uint64) (uint64, error) {
	var total, next uint64
	for i, l := range layout {
		if l[1] == 0 || l[0]%PageSize != 0 || l[1]%PageSize != 0 || l[0]+l[1] < l[0] || (i > 0 && l[0] < next) {
			return 0, fmt.Errorf("guest RAM region %#x+%#x: must be page-aligned, non-empty, ascending and disjoint", l[0], l[1])
		}
		next, total = l[0]+l[1], total+l[1]
	}
	if total == 0 {
		return 0, errors.New("no guest RAM")
	}
	return total, nil
}

// New maps anonymous memory for each region of layout ((guest address,
// size) pairs, as the platform lays RAM out): with transparent huge pages
// if *huge, with 4 KiB pages if !*huge, as the host's THP policy says if
// huge is nil.
func New(layout [][2]uint64, huge *bool) (*Memory, error) {
	size, err := checkLayout(layout)
	if err != nil {
		return nil, err
	}
	m := &Memory{size: size, mapped: true}
	for _, l := range layout {
		data, err := mapAligned(l[1])
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("map %d MiB of guest RAM: %w", l[1]>>20, err)
		}
		// Huge pages cut EPT/NPT misses (sequential I/O and networking
		// touch fresh guest pages fast), but one touched byte costs the
		// host 2 MiB; 4 KiB pages cost only what the guest touches.
		// Advisory only.
		if huge != nil {
			advice := unix.MADV_NOHUGEPAGE
			if *huge {
				advice = unix.MADV_HUGEPAGE
			}
			_ = unix.Madvise(data, advice)
		}
		m.regions = append(m.regions, Region{GPA: l[0], Data: data})
	}
	return m, nil
}

// NewFake returns memory backed by ordinary Go slices, for tests that need
// no KVM.
func NewFake(layout [][2]uint64) (*Memory, error) {
	size, err := checkLayout(layout)
	if err != nil {
		return nil, err
	}
	m := &Memory{size: size}
	for _, l := range layout {
		m.regions = append(m.regions, Region{GPA: l[0], Data: make([]byte, l[1])})
	}
	return m, nil
}

// Regions returns the RAM regions in ascending guest address order.
func (m *Memory) Regions() []Region { return m.regions }

// Size returns the total RAM size.
func (m *Memory) Size() uint64 { return m.size }

// ResidentKiB is how much of the RAM the host holds, in KiB (mincore):
// the pages the guest, or ember loading it, touched. It reads in 16 MiB
// steps through a fixed vector, so it allocates nothing; fake memory
// reports 0.
func (m *Memory) ResidentKiB() (uint64, error) {
	if !m.mapped {
		return 0, nil
	}
	var vec [4096]byte
	const step = uintptr(len(vec)) * PageSize
	var pages uint64
	for _, r := range m.regions {
		base, size := r.HostAddr(), uintptr(len(r.Data))
		for off := uintptr(0); off < size; off += step {
			n := min(size-off, step)
			if _, _, e := unix.Syscall(unix.SYS_MINCORE, base+off, n, uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
				return 0, fmt.Errorf("mincore: %w", e)
			}
			for _, b := range vec[:(n+PageSize-1)/PageSize] {
				pages += uint64(b & 1)
			}
		}
	}
	return pages * PageSize / 1024, nil
}

// Close unmaps the RAM. It is safe to call more than once.
func (m *Memory) Close() error {
	var first error
	if m.mapped {
		for _, r := range m.regions {
			if err := unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(r.Data)), uintptr(len(r.Data))); err != nil && first == nil {
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

// hugeAlign is the x86-64 huge page size.
const hugeAlign = 2 << 20

// mapAligned maps size bytes of anonymous memory starting on a 2 MiB
// boundary. KVM maps guest memory with huge pages only where the host
// address and the guest-physical address agree modulo 2 MiB (the platform
// places RAM on such boundaries), so a misaligned mapping would lose
// them whatever the THP setting; 6.1 kernels do not align large
// anonymous mappings themselves. Untouched memory costs nothing either way.
func mapAligned(size uint64) ([]byte, error) {
	const prot = unix.PROT_READ | unix.PROT_WRITE
	const flags = unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_NORESERVE
	if size > math.MaxInt-hugeAlign {
		return nil, fmt.Errorf("%d bytes: too large", size)
	}
	whole := uintptr(size) + hugeAlign
	p, err := unix.MmapPtr(-1, 0, nil, whole, prot, flags)
	if err != nil {
		return nil, err
	}
	start := uintptr(p)
	aligned := (start + hugeAlign - 1) &^ (hugeAlign - 1)
	// Give back the slack before and after; failures only leave it mapped.
	if head := aligned - start; head > 0 {
		_ = unix.MunmapPtr(p, head)
	}
	if tail := start + whole - (aligned + uintptr(size)); tail > 0 {
		_ = unix.MunmapPtr(unsafe.Add(p, aligned-start+uintptr(size)), tail)
	}
	return unsafe.Slice((*byte)(unsafe.Add(p, aligned-start)), size), nil
}
