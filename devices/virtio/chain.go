package virtio

import (
	"fmt"
	"io"
)

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
func (c *Chain) Reader() *Reader { return &Reader{segs: c.segs[:c.nRead], left: c.readLen} }

// Writer returns a writer over the device-writable buffers.
func (c *Chain) Writer() *Writer { return &Writer{segs: c.segs[c.nRead:], left: c.writeLen} }

// Reader reads a chain's device-readable bytes in order.
type Reader struct {
	segs [][]byte
	off  int
	left uint64
}

// Len is how many bytes are left to read.
func (r *Reader) Len() uint64 { return r.left }

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

func (r *Reader) advance(k int) {
	r.off += k
	r.left -= uint64(k)
	if r.off == len(r.segs[0]) {
		r.segs, r.off = r.segs[1:], 0
	}
}

// Discard skips n bytes (fewer if the chain has fewer).
func (r *Reader) Discard(n uint64) {
	for n > 0 && len(r.segs) > 0 {
		k := uint64(len(r.segs[0]) - r.off)
		if k > n {
			k = n
		}
		r.advance(int(k))
		n -= k
	}
}

// WriteToAt writes the next n bytes to w at offset off, straight from
// guest RAM (a disk write).
func (r *Reader) WriteToAt(w io.WriterAt, off int64, n uint64) error {
	if n > r.left {
		return io.ErrUnexpectedEOF
	}
	for n > 0 {
		b := r.segs[0][r.off:]
		if uint64(len(b)) > n {
			b = b[:n]
		}
		k, err := w.WriteAt(b, off)
		r.advance(k)
		if err != nil {
			return err
		}
		off += int64(k)
		n -= uint64(k)
	}
	return nil
}

// Writer writes a chain's device-writable bytes in order.
type Writer struct {
	segs    [][]byte
	off     int
	left    uint64
	written uint64
}

// Len is how many bytes can still be written.
func (w *Writer) Len() uint64 { return w.left }

// Written is how many bytes were written: the used length for Push.
func (w *Writer) Written() uint32 { return uint32(w.written) }

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

func (w *Writer) advance(k int) {
	w.off += k
	w.left -= uint64(k)
	w.written += uint64(k)
	if w.off == len(w.segs[0]) {
		w.segs, w.off = w.segs[1:], 0
	}
}

// ReadFromAt fills the next n bytes from r at offset off, straight into
// guest RAM (a disk read). Bytes past r's end read as zeros.
func (w *Writer) ReadFromAt(r io.ReaderAt, off int64, n uint64) error {
	if n > w.left {
		return io.ErrShortWrite
	}
	for n > 0 {
		b := w.segs[0][w.off:]
		if uint64(len(b)) > n {
			b = b[:n]
		}
		k, err := r.ReadAt(b, off)
		if err == io.EOF {
			clear(b[k:])
			k, err = len(b), nil
		}
		w.advance(k)
		if err != nil {
			return err
		}
		off += int64(k)
		n -= uint64(k)
	}
	return nil
}

// Skip leaves the next n writable bytes as they are but counts them as
// written (fewer if the chain has fewer).
func (w *Writer) Skip(n uint64) {
	for n > 0 && len(w.segs) > 0 {
		k := uint64(len(w.segs[0]) - w.off)
		if k > n {
			k = n
		}
		w.advance(int(k))
		n -= k
	}
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

// Next returns the next n device-readable bytes as views of guest RAM
// (for one vectored system call) and consumes them. It returns fewer
// bytes only when the chain has fewer.
func (r *Reader) Next(n uint64, segs [][]byte) [][]byte {
	for n > 0 && len(r.segs) > 0 {
		b := r.segs[0][r.off:]
		if uint64(len(b)) > n {
			b = b[:n]
		}
		segs = append(segs, b)
		r.advance(len(b))
		n -= uint64(len(b))
	}
	return segs
}

// Next returns the next n device-writable bytes as views of guest RAM
// and counts them as written; fewer only when the chain has fewer.
func (w *Writer) Next(n uint64, segs [][]byte) [][]byte {
	for n > 0 && len(w.segs) > 0 {
		b := w.segs[0][w.off:]
		if uint64(len(b)) > n {
			b = b[:n]
		}
		segs = append(segs, b)
		w.advance(len(b))
		n -= uint64(len(b))
	}
	return segs
}
