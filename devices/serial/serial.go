// Package serial emulates a 16550A UART as a pure state machine: register
// accesses in, output bytes and interrupt pulses out (16550A datasheet,
// National Semiconductor/TI, "PC16550D").
package serial

import (
	"io"
	"log/slog"
	"sync"

	"github.com/ember-vmm/ember/devices/irq"
)

// Register offsets from the base port.
const (
	regData = 0 // RBR (read) / THR (write); DLL with DLAB
	regIER  = 1 // DLM with DLAB
	regIIR  = 2 // IIR (read) / FCR (write)
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7
)

// Register bits.
const (
	ierRDA  = 1 << 0 // received data available
	ierTHRE = 1 << 1 // transmitter holding register empty
	ierRLS  = 1 << 2 // receiver line status

	iirNone  = 0x01
	iirTHRE  = 0x02
	iirRDA   = 0x04
	iirFIFOs = 0xc0

	lcrDLAB = 1 << 7

	mcrDTR  = 1 << 0
	mcrRTS  = 1 << 1
	mcrOUT1 = 1 << 2
	mcrOUT2 = 1 << 3
	mcrLoop = 1 << 4

	lsrDR   = 1 << 0
	lsrTHRE = 1 << 5
	lsrTEMT = 1 << 6

	msrCTS = 1 << 4
	msrDSR = 1 << 5
	msrRI  = 1 << 6
	msrDCD = 1 << 7
)

// rxCap is the receive buffer: more than the 16550A's 16-byte FIFO, so
// pasted input does not stall on every character.
const rxCap = 1024

// UART is one 16550A. Read and Write are called by vCPU threads, Input by
// the console reader; all state is under mu, and neither the interrupt nor
// the output is called with mu held: the host side may stall, the guest
// side may not.
type UART struct {
	mu                      sync.Mutex
	ier, lcr, mcr, scr, fcr byte
	dll, dlm                byte
	threPending             bool
	rx                      []byte // pending input, at most rxCap
	out                     io.ByteWriter
	irq                     irq.Line
	log                     *slog.Logger
}

// New returns a UART handing each transmitted byte to out (which must not
// block: the VMM buffers) and raising its edge-triggered line through irq.
func New(out io.ByteWriter, line irq.Line, log *slog.Logger) *UART {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if line == nil {
		line = irq.None{}
	}
	return &UART{out: out, irq: line, log: log, dll: 12, mcr: mcrOUT2, rx: make([]byte, 0, rxCap)}
}

// Read implements bus.Device.
func (u *UART) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) == 0 {
		return
	}
	u.mu.Lock()
	v, fire := u.readReg(off)
	u.mu.Unlock()
	data[0] = v
	if fire {
		u.irq.Trigger()
	}
}

// Write implements bus.Device; wider accesses act on their low byte.
func (u *UART) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	u.mu.Lock()
	fire, tx, ok := u.writeReg(off, data[0])
	u.mu.Unlock()
	if ok {
		_ = u.out.WriteByte(tx)
	}
	if fire {
		u.irq.Trigger()
	}
}

func (u *UART) readReg(off uint64) (v byte, fire bool) {
	switch off {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			return u.dll, false
		}
		if len(u.rx) == 0 {
			return 0, false
		}
		v = u.rx[0]
		u.rx = u.rx[:copy(u.rx, u.rx[1:])]
		// More data pending keeps the RDA condition: re-pulse the edge.
		return v, len(u.rx) > 0 && u.ier&ierRDA != 0
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			return u.dlm, false
		}
		return u.ier, false
	case regIIR:
		v = u.iir()
		if v&0x0f == iirTHRE {
			u.threPending = false // reading IIR clears a THRE interrupt
		}
		if u.fcr&1 != 0 {
			v |= iirFIFOs
		}
		return v, false
	case regLCR:
		return u.lcr, false
	case regMCR:
		return u.mcr, false
	case regLSR:
		v = lsrTHRE | lsrTEMT
		if len(u.rx) > 0 {
			v |= lsrDR
		}
		return v, false
	case regMSR:
		if u.mcr&mcrLoop != 0 {
			// Loopback wires DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
			if u.mcr&mcrDTR != 0 {
				v |= msrDSR
			}
			if u.mcr&mcrRTS != 0 {
				v |= msrCTS
			}
			if u.mcr&mcrOUT1 != 0 {
				v |= msrRI
			}
			if u.mcr&mcrOUT2 != 0 {
				v |= msrDCD
			}
			return v, false
		}
		return msrDCD | msrDSR | msrCTS, false
	case regSCR:
		return u.scr, false
	}
	return 0, false
}

// iir returns the highest-priority pending interrupt identification.
func (u *UART) iir() byte {
	switch {
	case u.ier&ierRDA != 0 && len(u.rx) > 0:
		return iirRDA
	case u.ier&ierTHRE != 0 && u.threPending:
		return iirTHRE
	}
	return iirNone
}

// writeReg applies a register write; tx, ok is a byte to transmit.
func (u *UART) writeReg(off uint64, v byte) (fire bool, tx byte, ok bool) {
	switch off {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			u.dll = v
			return false, 0, false
		}
		if u.mcr&mcrLoop != 0 {
			u.pushRX([]byte{v})
		} else {
			tx, ok = v, true
		}
		// The byte leaves at once: the holding register is empty again.
		u.threPending = true
		return u.ier&ierTHRE != 0 || (u.mcr&mcrLoop != 0 && u.ier&ierRDA != 0), tx, ok
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			u.dlm = v
			return false, 0, false
		}
		was := u.ier
		u.ier = v & 0x0f
		if u.ier&ierTHRE != 0 && was&ierTHRE == 0 {
			u.threPending = true
			return true, 0, false
		}
		return u.iir() != iirNone, 0, false
	case regIIR: // FCR
		u.fcr = v & 0xc9
		if v&0x02 != 0 {
			u.rx = u.rx[:0]
		}
	case regLCR:
		u.lcr = v
	case regMCR:
		u.mcr = v & 0x1f
	case regSCR:
		u.scr = v
	}
	return false, 0, false
}

func (u *UART) pushRX(p []byte) int {
	n := min(len(p), rxCap-len(u.rx))
	u.rx = append(u.rx, p[:n]...)
	return n
}

// Input queues host bytes for the guest and returns how many fit.
func (u *UART) Input(p []byte) int {
	u.mu.Lock()
	n := u.pushRX(p)
	fire := n > 0 && u.ier&ierRDA != 0
	u.mu.Unlock()
	if fire {
		u.irq.Trigger()
	}
	return n
}
