package boot

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/ember-vmm/ember/boot/aml"
)

// fakeMem is guest RAM for tests: regions split around a 32-bit hole at
// 3 GiB, as ember lays RAM out, with all-or-nothing accessors.
type fakeMem struct {
	regions []fakeRegion
}

type fakeRegion struct {
	gpa  uint64
	data []byte
}

const (
	testHoleStart = 0xC000_0000
	testHighStart = 0x1_0000_0000
)

func newMem(size uint64) *fakeMem {
	m := &fakeMem{}
	if size <= testHoleStart {
		m.regions = []fakeRegion{{0, make([]byte, size)}}
		return m
	}
	m.regions = []fakeRegion{{0, make([]byte, testHoleStart)}, {testHighStart, make([]byte, size-testHoleStart)}}
	return m
}

func (m *fakeMem) ram() []Range {
	var rs []Range
	for _, r := range m.regions {
		rs = append(rs, Range{r.gpa, uint64(len(r.data))})
	}
	return rs
}

func (m *fakeMem) slice(off int64, n int) ([]byte, error) {
	for _, r := range m.regions {
		if uint64(off) >= r.gpa && uint64(off)-r.gpa+uint64(n) <= uint64(len(r.data)) {
			o := uint64(off) - r.gpa
			return r.data[o : o+uint64(n)], nil
		}
	}
	return nil, fmt.Errorf("%#x+%d outside guest RAM", off, n)
}

func (m *fakeMem) WriteAt(p []byte, off int64) (int, error) {
	s, err := m.slice(off, len(p))
	if err != nil {
		return 0, err
	}
	return copy(s, p), nil
}

func (m *fakeMem) ReadAt(p []byte, off int64) (int, error) {
	s, err := m.slice(off, len(p))
	if err != nil {
		return 0, err
	}
	return copy(p, s), nil
}

// Test platform: KVM's interrupt controllers and sleep registers at ember's
// ports.
const (
	testLAPIC      = 0xfee00000
	testIOAPIC     = 0xfec00000
	testSleepCtl   = 0x0ff8
	testSleepSts   = 0x0ff9
	testSleepTypS5 = 5
)

func testPlatform(acpi bool, extraAML []byte) Platform {
	pf := Platform{LAPIC: testLAPIC, IOAPIC: testIOAPIC}
	if acpi {
		dsdt := append(aml.Name(`\_S5_`, aml.Package(aml.Int(testSleepTypS5), aml.Int(testSleepTypS5), aml.Int(0), aml.Int(0))), extraAML...)
		pf.ACPI = &ACPI{DSDT: dsdt, SleepControl: testSleepCtl, SleepStatus: testSleepSts}
	}
	return pf
}

// tp is the shape tests describe a load in: whole files as byte slices.
type tp struct {
	Kernel     []byte
	KernelPath string
	Initrd     []byte
	Cmdline    string
	CPUs       int
	Mem        *fakeMem
	ACPI       bool
	AML        []byte
}

func (t tp) params() (Params, error) {
	name := t.KernelPath
	if name == "" {
		name = "kernel"
	}
	k, err := ParseKernel(bytes.NewReader(t.Kernel), int64(len(t.Kernel)), name)
	if err != nil {
		return Params{}, err
	}
	p := Params{Kernel: k, Cmdline: t.Cmdline, CPUs: t.CPUs, Platform: testPlatform(t.ACPI, t.AML)}
	if t.Mem != nil {
		p.Mem, p.RAM = t.Mem, t.Mem.ram()
	}
	if len(t.Initrd) > 0 {
		p.Initrd, p.InitrdSize = bytes.NewReader(t.Initrd), int64(len(t.Initrd))
	}
	return p, nil
}

// ld checks and loads t; Check must agree with Load.
func ld(t tp) (*Entry, error) {
	p, err := t.params()
	if err != nil {
		return nil, err
	}
	cerr := Check(p)
	e, err := Load(p)
	if (cerr == nil) != (err == nil) && !(err != nil && errors.Is(err, ErrParams) && p.Mem == nil) {
		return nil, fmt.Errorf("Check said %v but Load said %v", cerr, err)
	}
	return e, err
}

// detect parses a kernel held in memory.
func detect(k []byte) (Protocol, error) {
	kk, err := ParseKernel(bytes.NewReader(k), int64(len(k)), "kernel")
	if err != nil {
		return 0, err
	}
	return kk.Protocol, nil
}

func read(t *testing.T, m *fakeMem, addr uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := m.ReadAt(b, int64(addr)); err != nil {
		t.Fatalf("read %#x+%d: %v", addr, n, err)
	}
	return b
}

// slicingMem is fakeMem that lends windows of itself, as ember's guest
// memory does, and counts the writes that did not use them.
type slicingMem struct {
	*fakeMem
	writes int
}

func (m *slicingMem) Slice(gpa, n uint64) ([]byte, error) { return m.slice(int64(gpa), int(n)) }

func (m *slicingMem) WriteAt(p []byte, off int64) (int, error) {
	m.writes++
	return m.fakeMem.WriteAt(p, off)
}

// Files go straight into guest memory that lends windows of itself, with
// the same bytes as through the buffer; zeroing too.
func TestCopyToGuestDirect(t *testing.T) {
	src := make([]byte, 3*copyChunk+123)
	for i := range src {
		src[i] = byte(i * 7)
	}
	m := &slicingMem{fakeMem: newMem(1 << 20)}
	if err := copyToGuest(m, 0x1000, bytes.NewReader(src), 5, uint64(len(src)-5)); err != nil {
		t.Fatal(err)
	}
	got, _ := m.slice(0x1000, len(src)-5)
	if !bytes.Equal(got, src[5:]) || m.writes != 0 {
		t.Fatalf("direct copy: equal %v, %d buffered writes", bytes.Equal(got, src[5:]), m.writes)
	}
	if err := zeroGuest(m, 0x1000, 100); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.slice(0x1000, 100); !bytes.Equal(got, make([]byte, 100)) || m.writes != 0 {
		t.Fatalf("zeroing: %x, %d buffered writes", got[:8], m.writes)
	}
	// A short file is an error, not a half-loaded kernel.
	if err := copyToGuest(m, 0x1000, bytes.NewReader(src[:10]), 0, 100); err == nil {
		t.Fatal("a short read was accepted")
	}
	// A range beyond RAM takes the buffered path, which refuses it.
	if err := copyToGuest(m, 1<<20-10, bytes.NewReader(src), 0, 100); err == nil {
		t.Fatal("a copy past the end of RAM was accepted")
	}
}
