package console

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/devices/virtio/virtiotest"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls s until it holds want.
func waitFor(t *testing.T, s *syncBuffer, want string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if s.String() == want {
			return
		}
	}
	t.Fatalf("host got %q, want %q", s.String(), want)
}

// guest drives the device as Linux's virtio_console does.
type guest struct {
	t   *testing.T
	d   *virtiotest.Driver
	dev *Device
	ctl []*virtiotest.Request
}

type ctlMsg struct {
	port         uint32
	event, value uint16
	payload      string
}

// newGuest sets the device up with queues of sizes (virtiotest's default
// where not given).
func newGuest(t *testing.T, o Options, sizes ...uint16) *guest {
	dev := New(o, slog.New(slog.DiscardHandler))
	d := virtiotest.New(t, dev)
	d.Init(virtio.FeatureVersion1|virtio.FeatureEventIdx|FeatMultiport, sizes...)
	g := &guest{t: t, d: d, dev: dev}
	for range 8 {
		g.postCtl()
	}
	return g
}

func (g *guest) postCtl() {
	g.ctl = append(g.ctl, g.d.Submit(ctlRX, false, virtiotest.Buf{WriteLen: 64}))
}

func (g *guest) send(port uint32, event, value uint16) {
	b := make([]byte, ctlSize)
	binary.LittleEndian.PutUint32(b, port)
	binary.LittleEndian.PutUint16(b[4:], event)
	binary.LittleEndian.PutUint16(b[6:], value)
	g.d.Do(ctlTX, virtiotest.Buf{Data: b})
}

func (g *guest) recv() ctlMsg {
	g.t.Helper()
	r := g.d.Wait(ctlRX, g.ctl[0])
	g.ctl = g.ctl[1:]
	g.postCtl()
	b := r.Bytes()
	if len(b) < ctlSize {
		g.t.Fatalf("control message of %d bytes", len(b))
	}
	return ctlMsg{binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint16(b[4:]), binary.LittleEndian.Uint16(b[6:]), string(b[ctlSize:])}
}

// setup runs the driver's port discovery and returns what the device
// said about each port after PORT_READY.
func (g *guest) setup() map[uint32][]ctlMsg {
	g.t.Helper()
	g.send(0, evDeviceReady, 1)
	for p := range numPorts {
		if m := g.recv(); m.event != evDeviceAdd || m.port != uint32(p) {
			g.t.Fatalf("want DEVICE_ADD for port %d, got %+v", p, m)
		}
	}
	got := map[uint32][]ctlMsg{}
	for p := range uint32(numPorts) {
		g.send(p, evPortReady, 1)
		m := g.recv()
		got[p] = append(got[p], m)
		if p != portStdin || g.dev.opts.Stdin != nil {
			got[p] = append(got[p], g.recv())
		}
	}
	return got
}

func TestPortsAndOutput(t *testing.T) {
	var out, errb syncBuffer
	g := newGuest(t, Options{Stdout: &out, Stderr: &errb})
	got := g.setup()
	for p, name := range PortNames {
		ms := got[uint32(p)]
		if ms[0].event != evPortName || ms[0].payload != name {
			t.Fatalf("port %d: want PORT_NAME %q, got %+v", p, name, ms[0])
		}
	}
	for _, p := range []uint32{portStdout, portStderr} {
		if m := got[p][1]; m.event != evPortOpen || m.value != 1 {
			t.Fatalf("port %d: want the host end open, got %+v", p, m)
		}
	}
	if len(got[portStdin]) != 1 {
		t.Fatalf("stdin without host input: want no PORT_OPEN (end of file at once), got %+v", got[portStdin])
	}
	// Binary, with CR and LF untouched, in pieces and across buffers.
	blob := []byte("a\r\nb\nc\x00\xff")
	g.d.Do(txQueue(portStdout), virtiotest.Buf{Data: blob[:4]}, virtiotest.Buf{Data: blob[4:]})
	g.d.Do(txQueue(portStderr), virtiotest.Buf{Data: []byte("oops\n")})
	big := bytes.Repeat([]byte("0123456789abcdef"), 20<<10) // 320 KiB, over several chunks
	g.d.Do(txQueue(portStdout), virtiotest.Buf{Data: big})
	waitFor(t, &out, string(blob)+string(big))
	waitFor(t, &errb, "oops\n")
}

func TestStdinThenEOF(t *testing.T) {
	g := newGuest(t, Options{Stdin: strings.NewReader("line one\nline two\n")})
	if m := g.setup()[portStdin]; len(m) != 2 || m[1].event != evPortOpen || m[1].value != 1 {
		t.Fatalf("stdin with input: want PORT_NAME and PORT_OPEN 1, got %+v", m)
	}
	rx := g.d.Submit(rxQueue(portStdin), false, virtiotest.Buf{WriteLen: 4096})
	// Nothing is sent before the guest opens the port (Linux would drop it).
	if _, _, err := g.d.NextUsed(rxQueue(portStdin), 200*time.Millisecond); err == nil {
		t.Fatal("input sent to a port the guest has not opened")
	}
	g.send(portStdin, evPortOpen, 1)
	if got := string(g.d.Wait(rxQueue(portStdin), rx).Bytes()); got != "line one\nline two\n" {
		t.Fatalf("guest read %q", got)
	}
	if m := g.recv(); m.port != portStdin || m.event != evPortOpen || m.value != 0 {
		t.Fatalf("after the input's end: want PORT_OPEN 0 (host closed), got %+v", m)
	}
}

// A guest's garbage on the control queue is counted, and the device goes
// on serving.
func TestHostileControl(t *testing.T) {
	var out syncBuffer
	g := newGuest(t, Options{Stdout: &out})
	g.send(99, evPortReady, 1)
	g.send(1, 0x7777, 0)
	g.d.Do(ctlTX, virtiotest.Buf{Data: []byte{1, 2}})
	if n := g.dev.stats.GuestFaults.Load(); n != 3 {
		t.Fatalf("guest faults %d, want 3", n)
	}
	g.setup()
	g.d.Do(txQueue(portStdout), virtiotest.Buf{Data: []byte("still here")})
	waitFor(t, &out, "still here")
}

// A host that stops reading holds the guest's output back but not the
// device's end: after the drain bound the worker returns.
func TestStalledHostDrain(t *testing.T) {
	pr, pw := io.Pipe()
	defer pr.Close()
	sizes := make([]uint16, txQueue(portStdout)+1)
	sizes[txQueue(portStdout)] = 32 // more than outChunks+2, a power of two
	g := newGuest(t, Options{Stdout: pw, Drain: 200 * time.Millisecond}, sizes...)
	g.setup()
	for range outChunks + 2 {
		g.d.Submit(txQueue(portStdout), false, virtiotest.Buf{Data: make([]byte, chunkSize)})
	}
	done := make(chan struct{})
	go func() { g.d.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the device did not stop within its drain bound while the host reader stalled")
	}
}
