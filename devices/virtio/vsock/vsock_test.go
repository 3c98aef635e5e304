package vsock

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/devices/virtio/virtiotest"
)

const guestCID = 3

// guest drives the device like Linux's vsock transport would.
type guest struct {
	t   *testing.T
	d   *virtiotest.Driver
	dev *Device
	rx  []*virtiotest.Request
}

func newGuest(t *testing.T) *guest {
	uds := filepath.Join(t.TempDir(), "v.sock")
	dev, err := Open(Options{CID: guestCID, UDS: uds}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	d := virtiotest.New(t, dev)
	d.Init(virtio.FeatureVersion1|virtio.FeatureEventIdx, 64, 64, 16)
	g := &guest{t: t, d: d, dev: dev}
	for range 8 {
		g.post()
	}
	return g
}

func (g *guest) post() {
	g.rx = append(g.rx, g.d.Submit(queueRX, false, virtiotest.Buf{WriteLen: 4096}))
}

// recv returns the next packet the device put in the receive queue.
func (g *guest) recv() (header, []byte) {
	g.t.Helper()
	r := g.d.Wait(queueRX, g.rx[0])
	g.rx = g.rx[1:]
	g.post()
	b := r.Bytes()
	if len(b) < hdrSize {
		g.t.Fatalf("rx packet of %d bytes", len(b))
	}
	var h header
	h.decode(b)
	if int(h.len) != len(b)-hdrSize {
		g.t.Fatalf("header says %d bytes, packet has %d", h.len, len(b)-hdrSize)
	}
	return h, b[hdrSize:]
}

// expectNone checks that no packet arrives for a while.
func (g *guest) expectNone() {
	g.t.Helper()
	if head, _, err := g.d.NextUsed(queueRX, 300*time.Millisecond); err == nil {
		g.t.Fatalf("unexpected packet (descriptor %d)", head)
	}
}

func (g *guest) send(op uint16, src, dst uint32, buf, fwd uint32, payload []byte) {
	g.t.Helper()
	h := header{srcCID: guestCID, dstCID: hostCID, srcPort: src, dstPort: dst, len: uint32(len(payload)),
		typ: typeStream, op: op, bufAlloc: buf, fwdCount: fwd}
	b := make([]byte, hdrSize)
	h.encode(b)
	g.d.Do(queueTX, virtiotest.Buf{Data: append(b, payload...)})
}

func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	b := make([]byte, n)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("host read: %v", err)
	}
	return string(b)
}

func TestHostConnects(t *testing.T) {
	g := newGuest(t)
	c, err := net.Dial("unix", g.dev.opts.UDS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "CONNECT 1234\n")
	h, _ := g.recv()
	if h.op != opRequest || h.dstPort != 1234 || h.srcCID != hostCID || h.dstCID != guestCID {
		t.Fatalf("want a REQUEST to port 1234, got %+v", h)
	}
	hp := h.srcPort
	g.send(opResponse, 1234, hp, 64<<10, 0, nil)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "OK "+strconv.Itoa(int(hp))+"\n" {
		t.Fatalf("handshake answer %q %v", line, err)
	}
	io.WriteString(c, "ping")
	h, p := g.recv()
	if h.op != opRW || string(p) != "ping" || h.dstPort != 1234 {
		t.Fatalf("want RW ping, got %+v %q", h, p)
	}
	g.send(opRW, 1234, hp, 64<<10, 4, []byte("pong"))
	if got := readN(t, c, 4); got != "pong" {
		t.Fatalf("host got %q", got)
	}
	c.Close()
	h, _ = g.recv()
	if h.op != opShutdown || h.flags != shutRecv|shutSend {
		t.Fatalf("want SHUTDOWN after the host closed, got %+v", h)
	}
	g.send(opRst, 1234, hp, 0, 0, nil)
}

func TestGuestConnects(t *testing.T) {
	g := newGuest(t)
	ln, err := net.Listen("unix", g.dev.opts.UDS+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g.send(opRequest, 40000, 5000, 64<<10, 0, nil)
	h, _ := g.recv()
	if h.op != opResponse || h.dstPort != 40000 || h.srcPort != 5000 {
		t.Fatalf("want RESPONSE, got %+v", h)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g.send(opRW, 40000, 5000, 64<<10, 0, []byte("hello host"))
	if got := readN(t, c, 10); got != "hello host" {
		t.Fatalf("host got %q", got)
	}
	io.WriteString(c, "hello guest")
	if h, p := g.recv(); h.op != opRW || string(p) != "hello guest" {
		t.Fatalf("guest got %+v %q", h, p)
	}
	// No listener: refused with RST.
	g.send(opRequest, 40001, 6000, 64<<10, 0, nil)
	if h, _ := g.recv(); h.op != opRst || h.dstPort != 40001 {
		t.Fatalf("want RST for a port nobody listens on, got %+v", h)
	}
}

// The host never sends more than the guest's credit.
func TestCreditToGuest(t *testing.T) {
	g := newGuest(t)
	ln, err := net.Listen("unix", g.dev.opts.UDS+"_7")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g.send(opRequest, 100, 7, 8, 0, nil)
	g.recv() // RESPONSE
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, strings.Repeat("x", 100))
	var got int
	for got < 8 {
		h, p := g.recv()
		if h.op != opRW {
			t.Fatalf("got %+v", h)
		}
		got += len(p)
	}
	if got != 8 {
		t.Fatalf("guest with 8 bytes of credit got %d", got)
	}
	g.expectNone()
	g.send(opCreditUpdate, 100, 7, 8, 8, nil)
	if h, p := g.recv(); h.op != opRW || len(p) == 0 || len(p) > 8 {
		t.Fatalf("after a credit update: %+v %d bytes", h, len(p))
	}
}

// A guest that sends beyond its credit loses the connection, not ember
// its memory; a broken packet costs nothing else.
func TestHostileGuest(t *testing.T) {
	g := newGuest(t)
	ln, err := net.Listen("unix", g.dev.opts.UDS+"_9")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g.send(opRequest, 200, 9, 64<<10, 0, nil)
	g.recv()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // never read: ember's buffer fills
	big := bytes.Repeat([]byte("y"), 60<<10)
	var rst bool
	for i := 0; i < 12 && !rst; i++ {
		g.send(opRW, 200, 9, 64<<10, 0, big)
		rst = g.dev.Stats().GuestFaults.Load() > 0
	}
	if !rst {
		t.Fatal("sending 720 KiB against 256 KiB of credit was not refused")
	}
	for {
		if h, _ := g.recv(); h.op == opRst {
			break
		}
	}
	// Garbage: short packet, foreign CIDs, a length the packet lacks,
	// data for nobody, an unknown op, a datagram.
	g.d.Do(queueTX, virtiotest.Buf{Data: []byte{1, 2, 3}})
	hb := make([]byte, hdrSize)
	(&header{srcCID: 99, dstCID: hostCID, typ: typeStream, op: opRW}).encode(hb)
	g.d.Do(queueTX, virtiotest.Buf{Data: hb})
	(&header{srcCID: guestCID, dstCID: hostCID, typ: typeStream, op: opRW, len: 1 << 20, srcPort: 5, dstPort: 5}).encode(hb)
	g.d.Do(queueTX, virtiotest.Buf{Data: hb})
	g.send(opRW, 300, 300, 0, 0, []byte("nobody"))
	g.send(77, 300, 300, 0, 0, nil)
	faults := g.dev.Stats().GuestFaults.Load()
	if faults < 4 {
		t.Errorf("guest faults %d", faults)
	}
	// Still working.
	ln2, _ := net.Listen("unix", g.dev.opts.UDS+"_10")
	defer ln2.Close()
	g.send(opRequest, 201, 10, 64<<10, 0, nil)
	for {
		h, _ := g.recv()
		if h.op == opResponse && h.dstPort == 201 {
			break
		}
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	for name, o := range map[string]Options{
		"reserved cid":  {CID: 2, UDS: filepath.Join(dir, "a")},
		"existing path": {CID: 3, UDS: dir},
		"long path":     {CID: 3, UDS: filepath.Join(dir, strings.Repeat("x", 120))},
		"no directory":  {CID: 3, UDS: filepath.Join(dir, "nope", "v.sock")},
	} {
		if d, err := Open(o, slog.New(slog.DiscardHandler)); err == nil {
			d.Close()
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseConnect(t *testing.T) {
	for in, ok := range map[string]bool{"CONNECT 52\n": true, "CONNECT 52": false, "connect 52\n": false,
		"CONNECT -1\n": false, "CONNECT 99999999999\n": false, "CONNECT 1 2\n": false} {
		if _, err := parseConnect(in); (err == nil) != ok {
			t.Errorf("%q: %v", in, err)
		}
	}
}

// The socket file goes away with the device.
func TestCloseRemovesSocket(t *testing.T) {
	uds := filepath.Join(t.TempDir(), "v.sock")
	d, err := Open(Options{CID: 3, UDS: uds}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := net.Dial("unix", uds); err == nil {
		t.Fatal("socket still there")
	}
	_ = context.Background()
}
