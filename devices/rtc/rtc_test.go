package rtc

import (
	"testing"
	"time"
)

func TestTimeInBCD(t *testing.T) {
	r := New()
	r.now = func() time.Time { return time.Date(2026, 11, 24, 13, 45, 59, 0, time.UTC) }
	get := func(i byte) byte {
		r.Write(0, []byte{i | 0x80})
		d := []byte{0}
		r.Read(1, d)
		return d[0]
	}
	for i, want := range map[byte]byte{regSeconds: 0x59, regMinutes: 0x45, regHours: 0x13, regDay: 0x24, regMonth: 0x11, regYear: 0x26, regCentury: 0x20} {
		if got := get(i); got != want {
			t.Errorf("register %#x = %#x, want %#x", i, got, want)
		}
	}
	if get(regA)&0x80 != 0 {
		t.Error("update in progress reported")
	}
	r.Write(0, []byte{regB})
	r.Write(1, []byte{b24h | bModeBinary})
	if get(regHours) != 13 {
		t.Error("binary mode ignored")
	}
	r.Write(0, []byte{0x40})
	r.Write(1, []byte{0x99})
	if get(0x40) != 0x99 {
		t.Error("CMOS RAM")
	}
}

func FuzzRTC(f *testing.F) {
	f.Add([]byte{0, 0x0b, 1, 0xff, 0, 0x0a, 1, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := New()
		for i := 0; i+1 < len(ops); i += 2 {
			d := []byte{ops[i+1]}
			if ops[i]&2 != 0 {
				r.Read(uint64(ops[i]&1), d)
			} else {
				r.Write(uint64(ops[i]&1), d)
			}
		}
	})
}
