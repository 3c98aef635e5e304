package memory

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

// Ring indices that a guest driver and a device update concurrently are
// read and written through these, never with plain loads and stores: an
// atomic access is a full barrier that the compiler keeps in place, so
// the buffers a ring index publishes are ordered with it (virtio 1.2
// §2.7.13). Go has no 16-bit atomics; a 16-bit field is accessed through
// the aligned 32-bit word that contains it, when that word lies inside b.

// word returns the 4-aligned word of b holding the uint16 at off, and the
// field's bit shift within it; ok is false when the word is not in b or
// the field is not 2-aligned (ring fields always are).
func word(b []byte, off int) (w *uint32, shift uint, ok bool) {
	if off < 0 || off+2 > len(b) {
		panic("memory: 16-bit field outside the slice")
	}
	// The slice is guest RAM (an mmap) or a test's heap buffer; either
	// way the address is stable while b is live.
	addr := uintptr(unsafe.Pointer(&b[off]))
	start := off - int(addr&3)
	if addr&1 != 0 || start < 0 || start+4 > len(b) {
		return nil, 0, false
	}
	return (*uint32)(unsafe.Pointer(&b[start])), uint(addr&3) * 8, true
}

// Load16 reads the little-endian uint16 at b[off:] atomically.
func Load16(b []byte, off int) uint16 {
	if w, shift, ok := word(b, off); ok {
		return uint16(atomic.LoadUint32(w) >> shift)
	}
	return binary.LittleEndian.Uint16(b[off:])
}

// Store16 writes v at b[off:] atomically, leaving the rest of its word
// as it is.
func Store16(b []byte, off int, v uint16) {
	w, shift, ok := word(b, off)
	if !ok {
		binary.LittleEndian.PutUint16(b[off:], v)
		return
	}
	for {
		old := atomic.LoadUint32(w)
		n := old&^(0xffff<<shift) | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(w, old, n) {
			return
		}
	}
}
