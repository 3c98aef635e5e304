package virtio

import (
	"fmt"
	"io"
)

// IOVMax is the most buffers one vectored system call (readv, preadv,
// writev) takes: Linux's IOV_MAX. A chain may have more (indirect tables).
const IOVMax = 1024

// Chain is one validated descriptor chain: the device-readable buffers,
// then the device-writable ones, as host views of guest RAM. Devices use
// Reader and Writer; they never see guest addresses.
type Chain struct {
	// Head is the chain's first descriptor index, returned in the used ring.
	Head     uint16
	segs     [][]byte
	nRead    int // segs[:nRead] are device-readable
	readLen  uint64
	writeLen uint64
}

// add appends a buffer, checking order, range and total length.
func (c *Chain) add(mem Memory, addr uint64, length uint32, write bool) error {
	if !write && c.nRead != len(c.segs) {
		return ErrDescOrder
	}
	if c.readLen+c.writeLen+uint64(length) > 1<<32-1 {
		return ErrChainLength
	}
	b, err := mem.Slice(addr, uint64(length))
	if err != nil {
		return fmt.Errorf("%w: %#x+%#x", ErrDescRange, addr, length)
	}
	if length == 0 {
		return nil
	}
	c.segs = append(c.segs, b)
	if write {
		c.writeLen += uint64(length)
	} else {
		c.nRead++
		c.readLen += uint64(length)
	}
	return nil
}

// ReadLen and WriteLen are the chain's device-readable and -writable sizes.
func (c *Chain) ReadLen() uint64  { return c.readLen }
func (c *Chain) WriteLen() uint64 { return c.writeLen }

// Reader returns a reader over the device-readable buffers.
func (c *Chain) Reader() *Reader { return &Reader{cursor{segs: c.segs[:c.nRead], left: c.readLen}} }

// Writer returns a writer over the device-writable buffers.
func (c *Chain) Writer() *Writer { return &Writer{cursor{segs: c.segs[c.nRead:], left: c.writeLen}} }

// cursor walks a run of buffers; Reader and Writer are its two directions.
type cursor struct {
	segs [][]byte
	off  int
	left uint64
	done uint64
}

// Len is how many bytes are left.
func (c *cursor) Len() uint64 { return c.left }

func (c *cursor) advance(k int) {
	c.off += k
	c.left -= uint64(k)
	c.done += uint64(k)
	if c.off == len(c.segs[0]) {
		c.segs, c.off = c.segs[1:], 0
	}
}

// Next appends the next n bytes to segs as views of guest RAM (for one
// vectored system call) and consumes them; fewer only when fewer are left.
func (c *cursor) Next(n uint64, segs [][]byte) [][]byte {
	for n > 0 && len(c.segs) > 0 {
		b := c.segs[0][c.off:]
		if uint64(len(b)) > n {
			b = b[:n]
		}
		segs = append(segs, b)
		c.advance(len(b))
		n -= uint64(len(b))
	}
	return segs
}

// Skip consumes the next n bytes as they are (fewer if fewer are left).
func (c *cursor) Skip(n uint64) {
	for n > 0 && len(c.segs) > 0 {
		k := min(uint64(len(c.segs[0])-c.off), n)
		c.advance(int(k))
		n -= k
	}
}

// Reader reads a chain's device-readable bytes in order.
type Reader struct{ cursor }

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && len(r.segs) > 0 {
		k := copy(p[n:], r.segs[0][r.off:])
		n += k
		r.advance(k)
	}
	return n, nil
}

// Writer writes a chain's device-writable bytes in order; skipped bytes
// count as written.
type Writer struct{ cursor }

// Written is how many bytes were written: the used length for Push.
func (w *Writer) Written() uint32 { return uint32(w.done) }

// Write implements io.Writer; writing past the end is io.ErrShortWrite.
func (w *Writer) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) && len(w.segs) > 0 {
		k := copy(w.segs[0][w.off:], p[n:])
		n += k
		w.advance(k)
	}
	if n < len(p) {
		return n, io.ErrShortWrite
	}
	return n, nil
}

// NewChain builds a chain over host buffers: readable ones, then writable
// ones. Device tests and fuzz targets use it to feed a request parser
// without a queue.
func NewChain(readable, writable [][]byte) *Chain {
	c := &Chain{}
	for _, b := range readable {
		if len(b) > 0 {
			c.segs = append(c.segs, b)
			c.nRead++
			c.readLen += uint64(len(b))
		}
	}
	for _, b := range writable {
		if len(b) > 0 {
			c.segs = append(c.segs, b)
			c.writeLen += uint64(len(b))
		}
	}
	return c
}
