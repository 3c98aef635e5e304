package memory

import (
	"errors"
	"math"
	"testing"
)

func TestLayoutSplitsAroundHole(t *testing.T) {
	if l := Layout(512 << 20); len(l) != 1 || l[0] != [2]uint64{0, 512 << 20} {
		t.Fatalf("512M layout = %v", l)
	}
	l := Layout(4 << 30)
	if len(l) != 2 || l[0] != [2]uint64{0, HoleStart} || l[1] != [2]uint64{HighStart, 4<<30 - HoleStart} {
		t.Fatalf("4G layout = %v", l)
	}
}

func TestBounds(t *testing.T) {
	m := NewFake(HoleStart + 1<<20)
	p := []byte{1, 2, 3, 4}
	for _, c := range []struct {
		gpa  int64
		ok   bool
		desc string
	}{
		{0, true, "start"},
		{HoleStart - 4, true, "end of low RAM"},
		{HoleStart - 2, false, "straddles the hole"},
		{HoleStart, false, "in the hole"},
		{HighStart, true, "high RAM"},
		{HighStart + 1<<20 - 4, true, "end of high RAM"},
		{HighStart + 1<<20 - 3, false, "past the end"},
		{-1, false, "negative"},
		{math.MaxInt64, false, "huge"},
	} {
		_, err := m.WriteAt(p, c.gpa)
		if (err == nil) != c.ok {
			t.Errorf("%s: WriteAt(%#x) err = %v", c.desc, c.gpa, err)
		}
		if err != nil && !errors.Is(err, ErrOutOfRange) {
			t.Errorf("%s: error %v is not ErrOutOfRange", c.desc, err)
		}
	}
	if _, err := m.Slice(math.MaxUint64-1, 4); err == nil {
		t.Error("Slice overflowing uint64 succeeded")
	}
	q := make([]byte, 4)
	if _, err := m.ReadAt(q, HighStart); err != nil || q[2] != 3 {
		t.Fatalf("ReadAt high = %v %v", q, err)
	}
}

func TestNewRejectsBadSizes(t *testing.T) {
	for _, s := range []uint64{0, 4095} {
		if _, err := New(s); err == nil {
			t.Errorf("New(%d) succeeded", s)
		}
	}
	m, err := New(2 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func FuzzSlice(f *testing.F) {
	f.Add(uint64(0), uint64(1))
	f.Add(uint64(HoleStart-1), uint64(2))
	f.Add(uint64(math.MaxUint64), uint64(math.MaxUint64))
	m := NewFake(HoleStart + 1<<20)
	f.Fuzz(func(t *testing.T, gpa, n uint64) {
		s, err := m.Slice(gpa, n%(1<<24))
		if err == nil && uint64(len(s)) != n%(1<<24) {
			t.Fatalf("Slice(%#x, %d) returned %d bytes", gpa, n, len(s))
		}
	})
}
