// Package blk is virtio-blk (virtio 1.2 §5.2) over a raw image file:
// reads, writes, flushes that reach the disk (fsync), GET_ID, and DISCARD
// and WRITE_ZEROES where the host file system can punch holes. Requests
// are served on the device's worker, never on a vCPU thread.
package blk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ember-vmm/ember/devices/virtio"
)

// Feature bits (§5.2.3).
const (
	featSegMax      = 1 << 2
	featRO          = 1 << 5
	featBlkSize     = 1 << 6
	featFlush       = 1 << 9
	featDiscard     = 1 << 13
	featWriteZeroes = 1 << 14
)

// Request types and status values (§5.2.6).
const (
	typeIn          = 0
	typeOut         = 1
	typeFlush       = 4
	typeGetID       = 8
	typeDiscard     = 11
	typeWriteZeroes = 13

	statusOK     = 0
	statusIOErr  = 1
	statusUnsupp = 2
)

const (
	// SectorSize is virtio-blk's unit of addressing.
	SectorSize = 512
	// IDLen is the length of the GET_ID serial.
	IDLen     = 20
	queueSize = 256
	// maxRange bounds one DISCARD or WRITE_ZEROES (in sectors) so a
	// request's host work stays bounded.
	maxRange    = 1 << 22
	headerSize  = 16
	segmentSize = 16
	// batchMax is the most requests served before the driver is
	// interrupted, when it keeps queueing more.
	batchMax = 16
)

// Options describe one drive.
type Options struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Serial is what GET_ID returns (at most IDLen bytes).
	Serial string `json:"serial,omitempty"`
}

// ErrLocked reports an image another process holds.
var ErrLocked = errors.New("image is in use by another VM (locked)")

// Device is one virtio-blk drive.
type Device struct {
	opts     Options
	f        *os.File
	sectors  uint64
	features uint64
	config   [60]byte
	log      *slog.Logger
	stats    virtio.Stats
	ioCalls  atomic.Uint64 // vectored system calls, for tests of merging
}

// Open opens and locks the image: exclusively for a writable drive,
// shared for a read-only one (opened read-only, so the host file cannot
// change through it).
func Open(o Options, log *slog.Logger) (*Device, error) {
	if len(o.Serial) > IDLen {
		return nil, fmt.Errorf("serial %q: at most %d bytes", o.Serial, IDLen)
	}
	flag, lock := os.O_RDWR, unix.LOCK_EX
	if o.ReadOnly {
		flag, lock = os.O_RDONLY, unix.LOCK_SH
	}
	f, err := os.OpenFile(o.Path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = errors.New("not a regular file (a raw disk image is expected)")
		}
		return nil, fmt.Errorf("%s: %w", o.Path, err)
	}
	if err := unix.Flock(int(f.Fd()), lock|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", o.Path, ErrLocked)
		}
		return nil, fmt.Errorf("%s: lock: %w", o.Path, err)
	}
	d := &Device{opts: o, f: f, sectors: uint64(st.Size()) / SectorSize, log: log}
	if st.Size()%SectorSize != 0 {
		log.Warn("image size is not a multiple of 512 bytes: the tail is not visible to the guest", "path", o.Path, "size", st.Size())
	}
	d.features = featSegMax | featBlkSize | featFlush
	if o.ReadOnly {
		d.features |= featRO
	} else {
		d.features |= featWriteZeroes
		if d.canPunch(st.Size()) {
			d.features |= featDiscard
		}
	}
	d.fillConfig()
	return d, nil
}

// canPunch probes hole punching past the end of the file, where it
// changes nothing.
func (d *Device) canPunch(size int64) bool {
	off := (size + 4095) &^ 4095
	return unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, 4096) == nil
}

// fillConfig lays out struct virtio_blk_config (§5.2.4).
func (d *Device) fillConfig() {
	c, le := d.config[:], binary.LittleEndian
	le.PutUint64(c[0:], d.sectors)
	le.PutUint32(c[12:], queueSize-2) // seg_max: the header and status take two
	le.PutUint32(c[20:], SectorSize)  // blk_size
	le.PutUint32(c[36:], maxRange)    // max_discard_sectors
	le.PutUint32(c[40:], 1)           // max_discard_seg
	le.PutUint32(c[44:], 8)           // discard_sector_alignment: 4 KiB
	le.PutUint32(c[48:], maxRange)    // max_write_zeroes_sectors
	le.PutUint32(c[52:], 1)           // max_write_zeroes_seg
	c[56] = 1                         // write_zeroes_may_unmap
}

// Close releases the image (and its lock).
func (d *Device) Close() error { return d.f.Close() }

func (*Device) Type() uint32               { return virtio.TypeBlock }
func (d *Device) Features() uint64         { return d.features }
func (*Device) QueueMaxSizes() []uint16    { return []uint16{queueSize} }
func (*Device) WriteConfig(uint64, []byte) {}
func (*Device) Reset()                     {}
func (d *Device) Stats() *virtio.Stats     { return &d.stats }

// ReadConfig reads the configuration space; bytes past it read as zero.
func (d *Device) ReadConfig(off uint64, p []byte) {
	clear(p)
	if off < uint64(len(d.config)) {
		copy(p, d.config[off:])
	}
}

// Activate starts the request worker. Requests are served in order, off
// the vCPU threads: measured inside the nested test machine, several
// workers made sequential writes slower, not faster. Each wake-up takes
// what the driver queued (up to batchMax), merges reads or writes that
// continue one another into one system call (a large request the driver
// split in two, say) and interrupts once for the batch: each interrupt
// costs the guest exits.
func (d *Device) Activate(ctx context.Context, a *virtio.Activation) error {
	if !a.Queues[0].Ready() {
		return nil
	}
	a.Go(func() error {
		b := &batch{}
		return virtio.Serve(ctx, a, 0, func(q *virtio.Queue) error {
			defer a.Interrupt(0)
			for {
				var err error
				for len(b.reqs) < batchMax {
					var c *virtio.Chain
					if c, err = q.Pop(); err != nil || c == nil {
						break
					}
					d.prepare(b, c)
				}
				full := len(b.reqs) == batchMax
				d.run(b)
				for i := range b.reqs {
					d.finish(q, &b.reqs[i])
				}
				b.reset()
				if err != nil || !full {
					return err
				}
				// A driver that keeps the queue full still hears of
				// completions.
				a.Interrupt(0)
			}
		})
	})
	return nil
}

// request is one parsed request of a batch.
type request struct {
	c      *virtio.Chain
	r      *virtio.Reader
	w      *virtio.Writer
	typ    uint32
	off    int64
	n      uint64
	iov    [2]int // a read's or write's buffers: batch.iov[iov[0]:iov[1]]
	data   bool   // a read or write waiting for its I/O
	done   bool   // status is final
	status uint8
}

// batch is the requests of one wake-up and the views of guest RAM their
// data moves through, kept between batches so serving allocates nothing.
type batch struct {
	reqs []request
	iov  [][]byte
}

func (b *batch) reset() {
	clear(b.reqs)
	clear(b.iov)
	b.reqs, b.iov = b.reqs[:0], b.iov[:0]
}

// serve executes one request alone and returns its status. r holds the
// header (and data for writes); w has room for data (reads) and the
// status.
func (d *Device) serve(r *virtio.Reader, w *virtio.Writer) uint8 {
	b := &batch{}
	d.parse(b, r, w)
	d.run(b)
	return b.reqs[0].status
}

// prepare parses chain c into the batch.
func (d *Device) prepare(b *batch, c *virtio.Chain) {
	d.parse(b, c.Reader(), c.Writer())
	b.reqs[len(b.reqs)-1].c = c
}

// parse checks a request's header and, for a read or write, its range,
// and appends it to the batch; nothing is done to the image yet.
func (d *Device) parse(b *batch, r *virtio.Reader, w *virtio.Writer) {
	d.stats.Requests.Add(1)
	b.reqs = append(b.reqs, request{r: r, w: w})
	q := &b.reqs[len(b.reqs)-1]
	fail := func(st uint8) { q.status, q.done = st, true }
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil || w.Len() == 0 {
		d.stats.GuestFaults.Add(1)
		d.log.Warn("malformed request: no header or no status byte")
		fail(statusIOErr)
		return
	}
	q.typ = binary.LittleEndian.Uint32(h[0:])
	sector := binary.LittleEndian.Uint64(h[8:])
	switch q.typ {
	case typeIn, typeOut:
		if q.typ == typeOut && d.opts.ReadOnly {
			fail(statusIOErr)
			return
		}
		q.n = w.Len() - 1
		if q.typ == typeOut {
			q.n = r.Len()
		}
		off, ok := d.span(sector, q.n)
		if !ok {
			fail(statusIOErr)
			return
		}
		q.off, q.data = off, true
		q.iov[0] = len(b.iov)
		if q.typ == typeIn {
			b.iov = w.Next(q.n, b.iov)
		} else {
			b.iov = r.Next(q.n, b.iov)
		}
		q.iov[1] = len(b.iov)
	}
}

// run executes the batch's requests in order. Reads (or writes) that
// continue one another go to the image in one vectored call; a failure
// of that call fails each of them, as a failing disk would.
func (d *Device) run(b *batch) {
	for i := 0; i < len(b.reqs); {
		q := &b.reqs[i]
		if q.done {
			i++
			continue
		}
		if !q.data {
			q.status, q.done = d.other(q), true
			i++
			continue
		}
		j, end := i+1, q.off+int64(q.n)
		for j < len(b.reqs) && b.reqs[j].data && b.reqs[j].typ == q.typ && b.reqs[j].off == end {
			end += int64(b.reqs[j].n)
			j++
		}
		iov := b.iov[q.iov[0]:b.reqs[j-1].iov[1]]
		op, err := "read", error(nil)
		if q.typ == typeIn {
			err = d.preadv(iov, q.off)
		} else {
			op, err = "write", d.pwritev(iov, q.off)
		}
		st := uint8(statusOK)
		if err != nil {
			st = d.hostErr(op, err)
		}
		for k := i; k < j; k++ {
			m := &b.reqs[k]
			m.status, m.done = st, true
			if err == nil && m.typ == typeIn {
				d.stats.BytesWritten.Add(m.n)
			} else if err == nil {
				d.stats.BytesRead.Add(m.n)
			}
		}
		i = j
	}
}

// finish writes a request's status and returns its chain to the driver;
// the caller interrupts it.
func (d *Device) finish(q *virtio.Queue, m *request) {
	// The status byte is the last device-writable byte (§5.2.6).
	if m.w.Len() > 0 {
		m.w.Skip(m.w.Len() - 1)
		_, _ = m.w.Write([]byte{m.status})
	} else {
		d.stats.GuestFaults.Add(1)
	}
	q.Push(m.c, m.w.Written())
}

// other serves a request that moves no sector data.
func (d *Device) other(q *request) uint8 {
	switch q.typ {
	case typeFlush:
		if d.opts.ReadOnly {
			return statusOK
		}
		if err := d.f.Sync(); err != nil {
			return d.hostErr("flush", err)
		}
	case typeGetID:
		var id [IDLen]byte
		copy(id[:], d.opts.Serial)
		_, _ = q.w.Write(id[:min(IDLen, q.w.Len()-1)])
	case typeDiscard, typeWriteZeroes:
		if d.opts.ReadOnly || (q.typ == typeDiscard && d.features&featDiscard == 0) {
			return statusUnsupp
		}
		return d.ranges(q.typ, q.r)
	default:
		return statusUnsupp
	}
	return statusOK
}

// preadv fills segs from the image at off with as few system calls as
// the kernel allows (one per request, normally).
func (d *Device) preadv(segs [][]byte, off int64) error {
	return d.vectored(unix.Preadv, segs, off, func(rest [][]byte) error {
		// Past the end of a file that shrank: zeros, as on a disk.
		for _, s := range rest {
			clear(s)
		}
		return nil
	})
}

// pwritev writes segs to the image at off.
func (d *Device) pwritev(segs [][]byte, off int64) error {
	return d.vectored(unix.Pwritev, segs, off, func([][]byte) error { return io.ErrShortWrite })
}

// vectored repeats op until segs are done, at most IOV_MAX buffers a
// call; short is what a call that moved nothing means.
func (d *Device) vectored(op func(int, [][]byte, int64) (int, error), segs [][]byte, off int64, short func([][]byte) error) error {
	for len(segs) > 0 {
		d.ioCalls.Add(1)
		n, err := op(int(d.f.Fd()), segs[:min(len(segs), virtio.IOVMax)], off)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return short(segs)
		}
		off += int64(n)
		segs = skip(segs, n)
	}
	return nil
}

// skip drops the first n bytes of segs.
func skip(segs [][]byte, n int) [][]byte {
	for n > 0 && len(segs) > 0 {
		if n >= len(segs[0]) {
			n -= len(segs[0])
			segs = segs[1:]
			continue
		}
		segs[0] = segs[0][n:]
		n = 0
	}
	return segs
}

// span checks that n bytes at sector are whole sectors inside the disk
// and returns the byte offset.
func (d *Device) span(sector, n uint64) (int64, bool) {
	if n%SectorSize != 0 || sector > d.sectors || n/SectorSize > d.sectors-sector {
		d.stats.GuestFaults.Add(1)
		d.log.Warn("request outside the disk or not whole sectors", "sector", sector, "bytes", n, "sectors", d.sectors)
		return 0, false
	}
	return int64(sector * SectorSize), true
}

// ranges serves DISCARD and WRITE_ZEROES (§5.2.6.2): one segment.
func (d *Device) ranges(typ uint32, r *virtio.Reader) uint8 {
	if r.Len() != segmentSize {
		d.stats.GuestFaults.Add(1)
		return statusUnsupp
	}
	var s [segmentSize]byte
	_, _ = io.ReadFull(r, s[:])
	sector := binary.LittleEndian.Uint64(s[0:])
	count := uint64(binary.LittleEndian.Uint32(s[8:]))
	flags := binary.LittleEndian.Uint32(s[12:])
	if count > maxRange || flags&^1 != 0 {
		d.stats.GuestFaults.Add(1)
		return statusUnsupp
	}
	off, ok := d.span(sector, count*SectorSize)
	if !ok {
		return statusIOErr
	}
	n := int64(count * SectorSize)
	fd := int(d.f.Fd())
	if typ == typeDiscard || flags&1 != 0 {
		if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err == nil {
			return statusOK
		} else if typ == typeDiscard {
			return d.hostErr("discard", err)
		}
	}
	if unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
		return statusOK
	}
	// No help from the file system: write the zeros.
	zeros := make([]byte, min(n, 64<<10))
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := d.f.WriteAt(zeros[:k], off); err != nil {
			return d.hostErr("write zeroes", err)
		}
		off, n = off+k, n-k
	}
	return statusOK
}

// hostErr counts and logs a failure of the host file: the guest sees an
// I/O error, as on a failing disk.
func (d *Device) hostErr(op string, err error) uint8 {
	d.stats.Errors.Add(1)
	d.log.Error("virtio-blk: host I/O failed", "path", d.opts.Path, "op", op, "err", err)
	return statusIOErr
}
