package acpipm

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/vmm/ratelimit"
)

const s5 = 5

func TestS5PowersOffOnce(t *testing.T) {
	n := 0
	d := New(s5, func() { n++ }, nil)
	d.Write(0, []byte{3<<2 | slpEN}) // S3: ignored
	d.Write(0, []byte{s5 << 2})      // no SLP_EN
	d.Write(1, []byte{s5<<2 | slpEN})
	if n != 0 {
		t.Fatal("powered off on a non-S5 or non-control write")
	}
	d.Write(0, []byte{s5<<2 | slpEN})
	d.Write(0, []byte{s5<<2 | slpEN})
	if n != 1 {
		t.Fatalf("powerOff called %d times", n)
	}
	if d.Other() != 1 {
		t.Fatalf("other sleep states counted %d, want 1", d.Other())
	}
}

// TestGuestCannotFloodTheLog: a guest writing unsupported sleep states in a
// loop leaves a bounded number of log lines (the VMM hands devices
// rate-limited loggers).
func TestGuestCannotFloodTheLog(t *testing.T) {
	var buf bytes.Buffer
	log := ratelimit.NewLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), 10, time.Minute)
	d := New(s5, func() {}, log)
	for i := 0; i < 100000; i++ {
		d.Write(0, []byte{byte(i%5)<<2 | slpEN})
	}
	if n := strings.Count(buf.String(), "\n"); n == 0 || n > 10 {
		t.Fatalf("%d log lines for 100000 bad writes", n)
	}
}

// FuzzSleepRegisters writes guest-chosen bytes to both registers: power
// goes off at most once, and only for S5 with SLP_EN.
func FuzzSleepRegisters(f *testing.F) {
	f.Add([]byte{0, 3<<2 | slpEN, 0, s5<<2 | slpEN})
	f.Add([]byte{1, 0xff, 0, 0xff})
	f.Fuzz(func(t *testing.T, ops []byte) {
		n := 0
		d := New(s5, func() { n++ }, nil)
		want := 0
		for i := 0; i+1 < len(ops); i += 2 {
			off := uint64(ops[i] % 4)
			d.Write(off, ops[i+1:i+2])
			if off == 0 && ops[i+1]&slpEN != 0 && (ops[i+1]>>2)&7 == s5 {
				want = 1
			}
			d.Read(off, make([]byte, 2))
		}
		if n != want {
			t.Fatalf("powered off %d times, want %d", n, want)
		}
	})
}
