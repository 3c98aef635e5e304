package serial

import (
	"bytes"
	"sync"
	"testing"

	"github.com/ember-vmm/ember/devices/irq"
)

type sink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *sink) WriteByte(b byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.WriteByte(b)
}

func (s *sink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func rd(u *UART, off uint64) byte {
	d := []byte{0xaa}
	u.Read(off, d)
	return d[0]
}

func wr(u *UART, off uint64, v byte) { u.Write(off, []byte{v}) }

// TestLinuxProbe follows what drivers/tty/serial/8250 does: scratch test,
// loopback test, FIFO detection, then output with THRE interrupts.
func TestLinuxProbe(t *testing.T) {
	out := &sink{}
	irqs := 0
	u := New(out, irq.Func(func() { irqs++ }), nil)

	wr(u, regSCR, 0xa5)
	if rd(u, regSCR) != 0xa5 {
		t.Fatal("scratch register does not hold its value")
	}
	// Loopback: MSR reflects MCR outputs.
	wr(u, regMCR, mcrLoop|0x0a)
	if got := rd(u, regMSR) & 0xf0; got != 0x90 {
		t.Fatalf("loopback MSR = %#x, want 0x90", got)
	}
	wr(u, regMCR, mcrOUT2|mcrDTR|mcrRTS)
	// FIFO detection: FCR enable → IIR bits 7:6 set (16550A).
	wr(u, regIIR, 0x01)
	if rd(u, regIIR)&0xc0 != 0xc0 {
		t.Fatal("FIFO not reported")
	}
	// Divisor latch.
	wr(u, regLCR, lcrDLAB)
	wr(u, regData, 0x01)
	wr(u, regIER, 0x00)
	if rd(u, regData) != 1 || rd(u, regIER) != 0 {
		t.Fatal("divisor latch")
	}
	wr(u, regLCR, 0x03)
	if rd(u, regLSR)&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT {
		t.Fatal("transmitter not empty")
	}
	// Enabling THRE interrupts raises one at once.
	wr(u, regIER, ierTHRE)
	if irqs != 1 || rd(u, regIIR)&0x0f != iirTHRE {
		t.Fatalf("THRE interrupt: irqs=%d", irqs)
	}
	if rd(u, regIIR)&0x0f != iirNone {
		t.Fatal("reading IIR did not clear THRE")
	}
	for _, b := range []byte("hello\n") {
		wr(u, regData, b)
	}
	if out.String() != "hello\n" {
		t.Fatalf("output %q", out.String())
	}
	if irqs != 7 {
		t.Fatalf("irqs = %d, want one per byte written plus the enable", irqs)
	}
}

func TestInput(t *testing.T) {
	irqs := 0
	u := New(&sink{}, irq.Func(func() { irqs++ }), nil)
	wr(u, regIER, ierRDA)
	if n := u.Input([]byte("ab")); n != 2 || irqs != 1 {
		t.Fatalf("Input = %d, irqs %d", n, irqs)
	}
	if rd(u, regLSR)&lsrDR == 0 || rd(u, regIIR)&0x0f != iirRDA {
		t.Fatal("data ready not reported")
	}
	if rd(u, regData) != 'a' || rd(u, regData) != 'b' || rd(u, regLSR)&lsrDR != 0 {
		t.Fatal("FIFO order")
	}
	big := make([]byte, 2*rxCap)
	if n := u.Input(big); n != rxCap {
		t.Fatalf("Input accepted %d of %d, want the FIFO size %d", n, len(big), rxCap)
	}
}

// lockProbe is an output that checks the UART's lock is free while a
// byte is handed over: a stalled host must never hold up other vCPUs.
type lockProbe struct {
	u      *UART
	n      int
	locked bool
}

func (p *lockProbe) WriteByte(byte) error {
	p.n++
	if !p.u.mu.TryLock() {
		p.locked = true
		return nil
	}
	p.u.mu.Unlock()
	return nil
}

func TestOutputOutsideLock(t *testing.T) {
	p := &lockProbe{}
	u := New(p, irq.Func(func() {
		if !p.u.mu.TryLock() {
			p.locked = true
			return
		}
		p.u.mu.Unlock()
	}), nil)
	p.u = u
	wr(u, regIER, ierTHRE)
	for _, b := range []byte("abc") {
		wr(u, regData, b)
	}
	if p.n != 3 || p.locked {
		t.Fatalf("%d bytes out, lock held during output or interrupt: %v", p.n, p.locked)
	}
}

func FuzzUART(f *testing.F) {
	f.Add([]byte{0, 'x', 1, 2, 3, 0x80, 4, 0x10, 0x85})
	f.Add([]byte{2, 0xff, 0x83, 0x81, 0x87})
	f.Fuzz(func(t *testing.T, ops []byte) {
		u := New(&sink{}, irq.None{}, nil)
		for i := 0; i+1 < len(ops); i += 2 {
			off := uint64(ops[i] & 0x0f) // includes offsets past the 8 registers
			width := 1 << (ops[i] >> 6)  // 1, 2, 4, 8 bytes
			d := make([]byte, width)
			d[0] = ops[i+1]
			if ops[i]&0x20 != 0 {
				u.Read(off, d)
			} else {
				u.Write(off, d)
			}
			if ops[i]&0x10 != 0 {
				u.Input(ops[i+1 : i+2])
			}
		}
		if lsr := rd(u, regLSR); lsr&lsrTHRE == 0 {
			t.Fatalf("THRE clear: LSR %#x", lsr)
		}
	})
}
