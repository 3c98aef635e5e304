// Package rtc is a minimal MC146818 CMOS real-time clock at ports 0x70
// (index) and 0x71 (data): it reads the host's UTC time in BCD and never
// reports an update in progress. Without it Linux's rtc_cmos driver reads
// all-ones (UIP stuck set) and spins for seconds of VM exits at boot.
package rtc

import (
	"sync"
	"time"
)

// Register indexes (MC146818A datasheet).
const (
	regSeconds = 0x00
	regMinutes = 0x02
	regHours   = 0x04
	regWeekday = 0x06
	regDay     = 0x07
	regMonth   = 0x08
	regYear    = 0x09
	regA       = 0x0a
	regB       = 0x0b
	regC       = 0x0c
	regD       = 0x0d
	regCentury = 0x32

	bModeBinary = 1 << 2
	b24h        = 1 << 1
	dValidRAM   = 1 << 7
	aDivider    = 0x26 // 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) clear
)

// RTC is the device; register it at port 0x70 with size 2.
type RTC struct {
	mu    sync.Mutex
	index byte
	ram   [128]byte
	now   func() time.Time
}

// New returns an RTC reading the host clock.
func New() *RTC {
	r := &RTC{now: time.Now}
	r.ram[regB] = b24h
	return r
}

func bcd(v int) byte { return byte(v/10<<4 | v%10) }

// Read returns the indexed register on the data port.
func (r *RTC) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) == 0 || off != 1 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	data[0] = r.reg(r.index)
}

func (r *RTC) reg(i byte) byte {
	t := r.now().UTC()
	conv := bcd
	if r.ram[regB]&bModeBinary != 0 {
		conv = func(v int) byte { return byte(v) }
	}
	switch i {
	case regSeconds:
		return conv(t.Second())
	case regMinutes:
		return conv(t.Minute())
	case regHours:
		return conv(t.Hour())
	case regWeekday:
		return conv(int(t.Weekday()) + 1)
	case regDay:
		return conv(t.Day())
	case regMonth:
		return conv(int(t.Month()))
	case regYear:
		return conv(t.Year() % 100)
	case regCentury:
		return conv(t.Year() / 100)
	case regA:
		return aDivider
	case regC:
		return 0
	case regD:
		return dValidRAM
	}
	return r.ram[i&0x7f]
}

// Write selects a register (index port) or stores into CMOS RAM; the time
// itself cannot be set.
func (r *RTC) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if off == 0 {
		r.index = data[0] & 0x7f // bit 7 is the NMI mask
		return
	}
	switch r.index {
	case regB:
		r.ram[regB] = data[0] &^ 0x70 // no alarm/periodic/update interrupts
	case regA, regC, regD, regSeconds, regMinutes, regHours, regWeekday, regDay, regMonth, regYear, regCentury:
	default:
		r.ram[r.index] = data[0]
	}
}
