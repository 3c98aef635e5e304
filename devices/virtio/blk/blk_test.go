package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/devices/virtio/virtiotest"
)

func image(t testing.TB, size int, fill byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, bytes.Repeat([]byte{fill}, size), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func open(t testing.TB, o Options) *Device {
	t.Helper()
	d, err := Open(o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func header(typ uint32, sector uint64) []byte {
	h := make([]byte, headerSize)
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	return h
}

type drive struct{ *virtiotest.Driver }

func start(t *testing.T, dev *Device) drive {
	d := virtiotest.New(t, dev)
	d.Init(virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | dev.Features())
	return drive{d}
}

// read returns the status and n bytes at sector.
func (d drive) read(sector uint64, n uint32) (uint8, []byte) {
	b := d.Do(0, virtiotest.Buf{Data: header(typeIn, sector)}, virtiotest.Buf{WriteLen: n}, virtiotest.Buf{WriteLen: 1}).Bytes()
	if len(b) == 0 {
		d.T.Fatal("no status byte written")
	}
	return b[len(b)-1], b[:len(b)-1]
}

func (d drive) write(sector uint64, data []byte) uint8 {
	b := d.Do(0, virtiotest.Buf{Data: header(typeOut, sector)}, virtiotest.Buf{Data: data}, virtiotest.Buf{WriteLen: 1}).Bytes()
	return b[len(b)-1]
}

func (d drive) simple(typ uint32, extra []byte, writeLen uint32) []byte {
	bufs := []virtiotest.Buf{{Data: header(typ, 0)}}
	if extra != nil {
		bufs = append(bufs, virtiotest.Buf{Data: extra})
	}
	return d.Do(0, append(bufs, virtiotest.Buf{WriteLen: writeLen})...).Bytes()
}

func TestReadWriteFlush(t *testing.T) {
	p := image(t, 1<<20, 0)
	dev := open(t, Options{Path: p})
	d := start(t, dev)
	if got := binary.LittleEndian.Uint64(d.Config(0, 8)); got != 2048 {
		t.Fatalf("capacity %d sectors, want 2048", got)
	}
	data := bytes.Repeat([]byte("ember!!!"), 1024) // 8 KiB
	if st := d.write(10, data); st != statusOK {
		t.Fatalf("write status %d", st)
	}
	if st, got := d.read(10, 8192); st != statusOK || !bytes.Equal(got, data) {
		t.Fatalf("read back: status %d, equal %v", st, bytes.Equal(got, data))
	}
	if b := d.simple(typeFlush, nil, 1); b[0] != statusOK {
		t.Fatalf("flush status %d", b[0])
	}
	img, _ := os.ReadFile(p)
	if !bytes.Equal(img[10*512:10*512+8192], data) {
		t.Fatal("data not in the image file")
	}
	if s := dev.Stats(); s.BytesRead.Load() != 8192 || s.BytesWritten.Load() != 8192 || s.Requests.Load() != 3 {
		t.Errorf("stats %v", s.Snapshot())
	}
	if dev.Features()&featFlush == 0 {
		t.Error("FLUSH not offered")
	}
}

func TestGetID(t *testing.T) {
	d := start(t, open(t, Options{Path: image(t, 4096, 0), Serial: "ember-disk-1"}))
	b := d.simple(typeGetID, nil, IDLen+1)
	if string(bytes.TrimRight(b[:IDLen], "\x00")) != "ember-disk-1" || b[IDLen] != statusOK {
		t.Fatalf("GET_ID %q", b)
	}
}

func TestReadOnly(t *testing.T) {
	p := image(t, 64<<10, 0x5a)
	dev := open(t, Options{Path: p, ReadOnly: true})
	if dev.Features()&featRO == 0 {
		t.Fatal("RO not offered")
	}
	d := start(t, dev)
	if st := d.write(0, make([]byte, 512)); st != statusIOErr {
		t.Fatalf("write to a read-only drive: status %d", st)
	}
	seg := make([]byte, segmentSize)
	binary.LittleEndian.PutUint32(seg[8:], 8)
	if b := d.simple(typeWriteZeroes, seg, 1); b[0] == statusOK {
		t.Fatal("write zeroes accepted on a read-only drive")
	}
	if st, got := d.read(0, 512); st != statusOK || got[0] != 0x5a {
		t.Fatalf("read: %d %x", st, got[:4])
	}
	img, _ := os.ReadFile(p)
	if !bytes.Equal(img, bytes.Repeat([]byte{0x5a}, 64<<10)) {
		t.Fatal("read-only image changed")
	}
}

func TestBadRequests(t *testing.T) {
	p := image(t, 64<<10, 1)
	dev := open(t, Options{Path: p})
	d := start(t, dev)
	for name, st := range map[string]uint8{
		"read past the end":        func() uint8 { s, _ := d.read(127, 1024); return s }(),
		"read at a huge sector":    func() uint8 { s, _ := d.read(^uint64(0)>>1, 512); return s }(),
		"read of a partial sector": func() uint8 { s, _ := d.read(0, 100); return s }(),
		"write past the end":       d.write(128, make([]byte, 512)),
		"unknown type":             d.simple(99, nil, 1)[0],
		"discard of two segments":  d.simple(typeDiscard, make([]byte, 32), 1)[0],
	} {
		if st == statusOK {
			t.Errorf("%s: status OK", name)
		}
	}
	// No header at all, only a status byte: an error, and still answered.
	if b := d.Do(0, virtiotest.Buf{Data: []byte{1, 2}}, virtiotest.Buf{WriteLen: 1}).Bytes(); b[0] != statusIOErr {
		t.Errorf("headerless request: status %d", b[0])
	}
	// No writable byte for the status: answered with nothing written.
	if r := d.Do(0, virtiotest.Buf{Data: header(typeIn, 0)}); r.Written != 0 {
		t.Errorf("statusless request: %d bytes written", r.Written)
	}
	img, _ := os.ReadFile(p)
	if !bytes.Equal(img, bytes.Repeat([]byte{1}, 64<<10)) {
		t.Fatal("a bad request changed the image")
	}
	if dev.Stats().GuestFaults.Load() < 5 {
		t.Errorf("guest faults %d", dev.Stats().GuestFaults.Load())
	}
	if st, _ := d.read(0, 512); st != statusOK {
		t.Fatal("device stopped working after bad requests")
	}
}

func TestDiscardAndWriteZeroes(t *testing.T) {
	p := image(t, 1<<20, 0xee)
	dev := open(t, Options{Path: p})
	d := start(t, dev)
	seg := func(sector uint64, n uint32, unmap bool) []byte {
		s := make([]byte, segmentSize)
		binary.LittleEndian.PutUint64(s[0:], sector)
		binary.LittleEndian.PutUint32(s[8:], n)
		if unmap {
			s[12] = 1
		}
		return s
	}
	if b := d.simple(typeWriteZeroes, seg(8, 16, false), 1); b[0] != statusOK {
		t.Fatalf("write zeroes: %d", b[0])
	}
	if b := d.simple(typeWriteZeroes, seg(64, 8, true), 1); b[0] != statusOK {
		t.Fatalf("write zeroes with unmap: %d", b[0])
	}
	img, _ := os.ReadFile(p)
	if !bytes.Equal(img[8*512:24*512], make([]byte, 16*512)) || !bytes.Equal(img[64*512:72*512], make([]byte, 8*512)) {
		t.Fatal("ranges not zeroed")
	}
	if img[7*512] != 0xee || img[24*512] != 0xee {
		t.Fatal("write zeroes went beyond its range")
	}
	if dev.Features()&featDiscard != 0 {
		if b := d.simple(typeDiscard, seg(128, 8, false), 1); b[0] != statusOK {
			t.Fatalf("discard: %d", b[0])
		}
	}
}

func TestLocking(t *testing.T) {
	p := image(t, 4096, 0)
	open(t, Options{Path: p})
	for _, ro := range []bool{false, true} {
		if _, err := Open(Options{Path: p, ReadOnly: ro}, slog.New(slog.DiscardHandler)); !errors.Is(err, ErrLocked) {
			t.Errorf("second open (read-only %v) of a writable image: %v, want ErrLocked", ro, err)
		}
	}
	q := image(t, 4096, 0)
	open(t, Options{Path: q, ReadOnly: true})
	open(t, Options{Path: q, ReadOnly: true}) // shared
	if _, err := Open(Options{Path: q}, slog.New(slog.DiscardHandler)); !errors.Is(err, ErrLocked) {
		t.Errorf("writable open of a shared image: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(Options{Path: t.TempDir()}, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a directory accepted as an image")
	}
	if _, err := Open(Options{Path: "/nonexistent/disk.img"}, slog.New(slog.DiscardHandler)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing image: %v", err)
	}
	if _, err := Open(Options{Path: image(t, 512, 0), Serial: "123456789012345678901"}, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("21-byte serial accepted")
	}
}

// A chain of more buffers than one vectored system call takes (indirect
// descriptors allow thousands) still reads and writes whole.
func TestManySegments(t *testing.T) {
	p := image(t, 4<<20, 0)
	d := start(t, open(t, Options{Path: p}))
	bufs := []virtiotest.Buf{{Data: header(typeOut, 0)}}
	var want []byte
	for i := range 1500 {
		b := bytes.Repeat([]byte{byte(i)}, 512)
		want = append(want, b...)
		bufs = append(bufs, virtiotest.Buf{Data: b})
	}
	r := d.Wait(0, d.Submit(0, true, append(bufs, virtiotest.Buf{WriteLen: 1})...))
	if st := r.Bytes()[r.Written-1]; st != statusOK {
		t.Fatalf("write status %d", st)
	}
	img, _ := os.ReadFile(p)
	if !bytes.Equal(img[:len(want)], want) {
		t.Fatal("image differs")
	}
	rb := []virtiotest.Buf{{Data: header(typeIn, 0)}}
	for range 1500 {
		rb = append(rb, virtiotest.Buf{WriteLen: 512})
	}
	r = d.Wait(0, d.Submit(0, true, append(rb, virtiotest.Buf{WriteLen: 1})...))
	if got := r.Bytes(); got[len(got)-1] != statusOK || !bytes.Equal(got[:len(want)], want) {
		t.Fatal("read back differs")
	}
}

// Many requests in flight at once complete, each exactly once, in
// whatever order the workers finish them.
func TestConcurrentRequests(t *testing.T) {
	p := image(t, 4<<20, 0)
	dev := open(t, Options{Path: p})
	d := virtiotest.New(t, dev)
	d.Init(virtio.FeatureVersion1|virtio.FeatureEventIdx|virtio.FeatureIndirectDesc|dev.Features(), 256)
	for round := range 20 {
		heads := map[uint16]bool{}
		for i := range 60 {
			r := d.Submit(0, true, virtiotest.Buf{Data: header(typeIn, uint64(i*8))}, virtiotest.Buf{WriteLen: 4096}, virtiotest.Buf{WriteLen: 1})
			heads[r.Head] = true
		}
		for range 60 {
			h, n, err := d.NextUsed(0, 10*time.Second)
			if err != nil {
				t.Fatalf("round %d: %v (%d outstanding)", round, err, len(heads))
			}
			if !heads[h] || n != 4097 {
				t.Fatalf("round %d: used head %d (%d bytes) not outstanding", round, h, n)
			}
			delete(heads, h)
		}
	}
}

// Requests the driver queues together complete with one interrupt: each
// costs a guest exits. (Without event indices, so the driver's wishes
// cannot hide extra interrupts.)
func TestOneInterruptPerBatch(t *testing.T) {
	dev := open(t, Options{Path: image(t, 1<<20, 0)})
	d := virtiotest.New(t, dev)
	d.Init(virtio.FeatureVersion1|dev.Features(), 64)
	d.Hold = true
	for i := range 4 {
		d.Submit(0, false, virtiotest.Buf{Data: header(typeIn, uint64(i*8))}, virtiotest.Buf{WriteLen: 4096}, virtiotest.Buf{WriteLen: 1})
	}
	d.Notify(0)
	deadline := time.Now().Add(10 * time.Second)
	for d.UsedIdx(0) != 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // an interrupt after the last push
	if got := d.UsedIdx(0); got != 4 {
		t.Fatalf("used index %d, want 4", got)
	}
	if n := dev.Stats().Interrupts.Load(); n != 1 {
		t.Fatalf("%d interrupts for one batch of 4 requests, want 1", n)
	}
}

// Reads or writes the driver queues together that continue one another
// reach the image in one system call; a gap, a flush or a bad request
// between them ends the run, and order is kept.
func TestMergeAdjacent(t *testing.T) {
	p := image(t, 1<<20, 0)
	dev := open(t, Options{Path: p})
	d := virtiotest.New(t, dev)
	d.Init(virtio.FeatureVersion1|dev.Features(), 64)
	d.Hold = true
	w := func(sector uint64, fill byte, n int) *virtiotest.Request {
		return d.Submit(0, false, virtiotest.Buf{Data: header(typeOut, sector)}, virtiotest.Buf{Data: bytes.Repeat([]byte{fill}, n)}, virtiotest.Buf{WriteLen: 1})
	}
	reqs := []*virtiotest.Request{
		w(0, 1, 4096), w(8, 2, 8192), w(24, 3, 512), // one run: sectors 0-24
		w(100, 4, 512), // a gap: its own call
		d.Submit(0, false, virtiotest.Buf{Data: header(typeFlush, 0)}, virtiotest.Buf{WriteLen: 1}),
		w(101, 5, 512),   // after the flush: its own call
		w(1<<30, 6, 512), // outside the disk: fails alone
		w(102, 7, 512),   // does not join 101 across the failure
		d.Submit(0, false, virtiotest.Buf{Data: header(typeIn, 0)}, virtiotest.Buf{WriteLen: 4096}, virtiotest.Buf{WriteLen: 1}),
		d.Submit(0, false, virtiotest.Buf{Data: header(typeIn, 8)}, virtiotest.Buf{WriteLen: 8192}, virtiotest.Buf{WriteLen: 1}),
	}
	d.Notify(0)
	want := []uint8{statusOK, statusOK, statusOK, statusOK, statusOK, statusOK, statusIOErr, statusOK, statusOK, statusOK}
	for i, r := range reqs {
		b := d.Wait(0, r).Bytes()
		if st := b[len(b)-1]; st != want[i] {
			t.Errorf("request %d: status %d, want %d", i, st, want[i])
		}
	}
	// 0-24 | 100 | 101 | 102 | the two reads of 0-24
	if n := dev.ioCalls.Load(); n != 5 {
		t.Errorf("%d vectored calls, want 5", n)
	}
	got := reqs[8].Bytes()
	if !bytes.Equal(got[:4096], bytes.Repeat([]byte{1}, 4096)) || !bytes.Equal(reqs[9].Bytes()[:8192], bytes.Repeat([]byte{2}, 8192)) {
		t.Error("merged reads returned the wrong bytes")
	}
	img, _ := os.ReadFile(p)
	for _, c := range []struct {
		off  int
		fill byte
		n    int
	}{{0, 1, 4096}, {4096, 2, 8192}, {12288, 3, 512}, {51200, 4, 512}, {51712, 5, 512}, {52224, 7, 512}} {
		if !bytes.Equal(img[c.off:c.off+c.n], bytes.Repeat([]byte{c.fill}, c.n)) {
			t.Errorf("image at %d: not the bytes written", c.off)
		}
	}
}
