// Package acpipm implements the ACPI hardware-reduced sleep control and
// status registers (ACPI 6.4 §4.8.3.7-8): a write of SLP_TYP=S5 with SLP_EN
// powers the VM off.
package acpipm

import (
	"log/slog"
	"sync"
	"sync/atomic"
)

const slpEN = 1 << 5

// Device is the two one-byte registers: control at offset 0, status at 1.
type Device struct {
	once     sync.Once
	s5       uint8
	powerOff func()
	other    atomic.Uint64
	log      *slog.Logger
}

// New returns the device; powerOff is called once on a request for sleep
// type s5 (the value the DSDT's \_S5 declares).
func New(s5 uint8, powerOff func(), log *slog.Logger) *Device {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Device{s5: s5, powerOff: powerOff, log: log}
}

// Other counts requests for sleep states other than S5 (ignored).
func (d *Device) Other() uint64 { return d.other.Load() }

// Read returns zero: no wake status.
func (d *Device) Read(_ uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// Write handles a sleep request on the control register.
func (d *Device) Write(off uint64, data []byte) {
	if off != 0 || len(data) == 0 {
		return
	}
	v := data[0]
	if v&slpEN == 0 {
		return
	}
	if typ := (v >> 2) & 7; typ != d.s5 {
		d.other.Add(1)
		d.log.Debug("unsupported sleep state", "slp_typ", typ)
		return
	}
	d.once.Do(d.powerOff)
}
