package memory

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// The platform's layout: RAM split around a hole from 3 GiB to 4 GiB.
const (
	HoleStart = 0xC000_0000
	HighStart = 0x1_0000_0000
)

func split(t testing.TB) *Memory {
	m, err := NewFake([][2]uint64{{0, HoleStart}, {HighStart, 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBadLayouts(t *testing.T) {
	for _, l := range [][][2]uint64{
		nil,
		{{0, 0}},
		{{0, 4095}},
		{{1, 4096}},
		{{0, 8192}, {4096, 4096}},
		{{0x10000, 4096}, {0, 4096}},
		{{^uint64(0) &^ 4095, 8192}},
	} {
		if _, err := NewFake(l); err == nil {
			t.Errorf("layout %v accepted", l)
		}
	}
}

func TestBounds(t *testing.T) {
	m := split(t)
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
		if _, err := New([][2]uint64{{0, s}}, nil); err == nil {
			t.Errorf("New(%d) succeeded", s)
		}
	}
	m, err := New([][2]uint64{{0, 2 << 20}}, nil)
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
	m := split(f)
	f.Fuzz(func(t *testing.T, gpa, n uint64) {
		s, err := m.Slice(gpa, n%(1<<24))
		if err == nil && uint64(len(s)) != n%(1<<24) {
			t.Fatalf("Slice(%#x, %d) returned %d bytes", gpa, n, len(s))
		}
	})
}

// Guest RAM is advised as the config says: huge pages when asked (hg),
// 4 KiB pages when asked (nh), neither when unset, so the host's THP
// policy applies as to any other memory.
func TestHugePageAdvice(t *testing.T) {
	on, off := true, false
	for _, c := range []struct {
		name string
		huge *bool
		want string // the VmFlags advice, "" for none
	}{{"on", &on, "hg"}, {"off", &off, "nh"}, {"unset", nil, ""}} {
		m, err := New([][2]uint64{{0, 4 << 20}}, c.huge)
		if err != nil {
			t.Fatal(err)
		}
		// The mapping's address, to find it in smaps.
		start := fmt.Sprintf("%x-", uintptr(unsafe.Pointer(&m.regions[0].Data[0])))
		b, err := os.ReadFile("/proc/self/smaps")
		if err != nil {
			t.Fatal(err)
		}
		i := strings.Index(string(b), "\n"+start)
		if i < 0 {
			t.Fatalf("guest RAM mapping %s not in smaps", start)
		}
		rest := string(b[i+1:])
		j := strings.Index(rest, "VmFlags:")
		if j < 0 {
			t.Fatal("no VmFlags")
		}
		flags := strings.Fields(strings.SplitN(rest[j:], "\n", 2)[0])
		for _, f := range []string{"hg", "nh"} {
			if slices.Contains(flags, f) != (f == c.want) {
				t.Errorf("huge %s: VmFlags %v, want advice %q", c.name, flags, c.want)
			}
		}
		m.Close()
	}
}

// Guest RAM starts on a 2 MiB boundary (KVM's condition for huge-page
// mappings), whole and usable, and closing unmaps it.
func TestNewAligns(t *testing.T) {
	for _, size := range []uint64{4096, 3 << 20, 64 << 20} {
		m, err := New([][2]uint64{{0, size}, {HighStart, size}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range m.Regions() {
			if r.HostAddr()%hugeAlign != 0 || r.Size() != size {
				t.Errorf("size %d: region at %#x, %d bytes", size, r.HostAddr(), r.Size())
			}
			// Every byte is usable.
			r.Data[0], r.Data[len(r.Data)-1] = 1, 2
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestResidentKiB counts the pages touched in every region and nothing
// else; fake memory has none.
func TestResidentKiB(t *testing.T) {
	off := false
	m, err := New([][2]uint64{{0, 40 << 20}, {64 << 20, 4 << 20}}, &off)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got, err := m.ResidentKiB(); err != nil || got != 0 {
		t.Fatalf("untouched RAM: %d KiB resident (%v), want 0", got, err)
	}
	// Both regions, and pages past the first 16 MiB step of the first.
	for _, gpa := range []uint64{0, 20 << 20, 40<<20 - 1, 64 << 20} {
		b, err := m.Slice(gpa, 1)
		if err != nil {
			t.Fatal(err)
		}
		b[0] = 1
	}
	if got, err := m.ResidentKiB(); err != nil || got != 16 {
		t.Fatalf("4 pages touched: %d KiB resident (%v), want 16", got, err)
	}
	f, err := NewFake([][2]uint64{{0, 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := f.ResidentKiB(); got != 0 {
		t.Fatalf("fake memory: %d KiB resident, want 0", got)
	}
}
