package bus

import (
	"errors"
	"maps"
	"testing"
)

type rec struct {
	lastOff uint64
	writes  int
}

func (r *rec) Read(off uint64, d []byte) {
	r.lastOff = off
	for i := range d {
		d[i] = byte(off) + byte(i)
	}
}
func (r *rec) Write(off uint64, d []byte) { r.lastOff, r.writes = off, r.writes+1 }

func TestRegister(t *testing.T) {
	b := New("pio")
	if err := b.Register("a", 0x3f8, 8, &rec{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		base, size uint64
		want       error
	}{
		{0x3f8, 1, ErrOverlap},
		{0x3f0, 9, ErrOverlap},
		{0x3ff, 4, ErrOverlap},
		{0x400, 0, ErrZeroSize},
		{^uint64(0) - 1, 4, ErrOverflow},
		{0x3f0, 8, nil},
		{0x400, 8, nil},
	} {
		err := b.Register("b", c.base, c.size, &rec{})
		if !errors.Is(err, c.want) {
			t.Errorf("Register(%#x, %d) = %v, want %v", c.base, c.size, err, c.want)
		}
	}
}

func TestDispatch(t *testing.T) {
	b := New("pio")
	r := &rec{}
	if err := b.Register("r", 0x100, 0x10, r); err != nil {
		t.Fatal(err)
	}
	d := make([]byte, 2)
	b.Read(0x105, d)
	if r.lastOff != 5 || d[0] != 5 || d[1] != 6 {
		t.Fatalf("read at 0x105: off %d data %v", r.lastOff, d)
	}
	b.Write(0x10f, d)
	if r.writes != 1 || r.lastOff != 0xf {
		t.Fatalf("write at 0x10f: writes %d off %d", r.writes, r.lastOff)
	}
	var misses int
	b.OnUnclaimed(func(uint64, int, bool) { misses++ })
	b.Read(0x110, d)
	if d[0] != 0xff || d[1] != 0xff {
		t.Fatalf("unclaimed read = %v, want all-ones", d)
	}
	b.Write(0xff, d)
	if b.Unclaimed() != 2 || misses != 2 {
		t.Fatalf("unclaimed = %d (hook %d), want 2", b.Unclaimed(), misses)
	}
}

// Every access is counted against the device that served it, and one no
// device claims against "unclaimed": the exit classes a run reports.
func TestAccesses(t *testing.T) {
	b := New("pio")
	for _, r := range []struct {
		name string
		base uint64
	}{{"serial", 0x3f8}, {"rtc", 0x70}, {"idle", 0x100}} {
		if err := b.Register(r.name, r.base, 8, &rec{}); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 1)
	for range 3 {
		b.Write(0x3f8, buf)
	}
	b.Read(0x3fd, buf)
	b.Read(0x71, buf)
	b.Write(0x500, buf)
	got := b.Accesses()
	want := map[string]uint64{"serial": 4, "rtc": 1, "unclaimed": 1}
	if !maps.Equal(got, want) {
		t.Fatalf("accesses %v, want %v", got, want)
	}
}
