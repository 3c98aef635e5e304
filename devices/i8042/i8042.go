// Package i8042 emulates just enough of the PS/2 controller for Linux to
// probe it quickly and to reboot through it: command 0xfe on port 0x64
// pulses the CPU reset line, which ends the VM (Firecracker does the same).
package i8042

import (
	"log/slog"
	"sync"
	"sync/atomic"
)

// Controller commands (port 0x64) and status bits.
const (
	cmdReadCTR  = 0x20
	cmdWriteCTR = 0x60
	cmdDisAux   = 0xa7
	cmdEnAux    = 0xa8
	cmdAuxTest  = 0xa9
	cmdSelfTest = 0xaa
	cmdKbdTest  = 0xab
	cmdDisKbd   = 0xad
	cmdEnKbd    = 0xae
	cmdWriteAux = 0xd4
	cmdReset    = 0xfe

	statusOBF    = 1 << 0 // output buffer full
	statusSystem = 1 << 2
	statusCmd    = 1 << 3 // last write was a command
)

// Controller is the i8042. Register Data() at port 0x60 and Command() at
// port 0x64, each one port wide.
type Controller struct {
	mu      sync.Mutex
	ctr     byte // controller configuration ("command byte")
	out     []byte
	pending byte // command waiting for its data byte
	lastCmd bool
	reset   func()
	resets  atomic.Uint64
	unknown atomic.Uint64
	log     *slog.Logger
}

// New returns a controller that calls reset when the guest pulses reset.
func New(reset func(), log *slog.Logger) *Controller {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Controller{ctr: 0x47, reset: reset, log: log}
}

type dataPort struct{ c *Controller }
type cmdPort struct{ c *Controller }

// Data is the bus device for port 0x60.
func (c *Controller) Data() interface {
	Read(uint64, []byte)
	Write(uint64, []byte)
} {
	return dataPort{c}
}

// Command is the bus device for port 0x64.
func (c *Controller) Command() interface {
	Read(uint64, []byte)
	Write(uint64, []byte)
} {
	return cmdPort{c}
}

func fill(d []byte, v byte) {
	for i := range d {
		d[i] = 0
	}
	if len(d) > 0 {
		d[0] = v
	}
}

func (p dataPort) Read(_ uint64, d []byte) {
	c := p.c
	c.mu.Lock()
	var v byte
	if len(c.out) > 0 {
		v = c.out[0]
		c.out = c.out[1:]
	}
	c.mu.Unlock()
	fill(d, v)
}

func (p dataPort) Write(_ uint64, d []byte) {
	if len(d) == 0 {
		return
	}
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastCmd = false
	switch c.pending {
	case cmdWriteCTR:
		c.ctr = d[0]
	case cmdWriteAux:
		// No mouse: the byte is swallowed.
	default:
		// A keyboard command: answer "resend" so drivers give up quickly.
		c.out = append(c.out[:0], 0xfe)
	}
	c.pending = 0
}

func (p cmdPort) Read(_ uint64, d []byte) {
	c := p.c
	c.mu.Lock()
	v := byte(statusSystem)
	if len(c.out) > 0 {
		v |= statusOBF
	}
	if c.lastCmd {
		v |= statusCmd
	}
	c.mu.Unlock()
	fill(d, v)
}

func (p cmdPort) Write(_ uint64, d []byte) {
	if len(d) == 0 {
		return
	}
	c := p.c
	c.mu.Lock()
	c.lastCmd = true
	reset := false
	switch d[0] {
	case cmdReadCTR:
		c.out = append(c.out[:0], c.ctr)
	case cmdWriteCTR, cmdWriteAux:
		c.pending = d[0]
	case cmdSelfTest:
		c.out = append(c.out[:0], 0x55)
	case cmdKbdTest, cmdAuxTest:
		c.out = append(c.out[:0], 0x00)
	case cmdDisAux, cmdEnAux, cmdDisKbd, cmdEnKbd:
	case cmdReset:
		reset = true
	default:
		c.unknown.Add(1)
	}
	c.mu.Unlock()
	if reset {
		c.resets.Add(1)
		c.log.Debug("guest pulsed the reset line")
		c.reset()
	}
}

// Unknown counts commands the controller does not implement.
func (c *Controller) Unknown() uint64 { return c.unknown.Load() }
