package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/ember-vmm/ember/boot/elf64/elf64test"
)

type elfSeg struct {
	paddr uint64
	data  []byte
	memsz uint64
}

type elfSpec struct {
	segs   []elfSeg // default: one segment at 16 MiB
	entry  uint64   // default: start of the first segment
	noNote bool
	desc8  bool // 8-byte note value, as Linux's _ASM_PTR emits
}

func elfNote(name string, typ uint32, desc []byte) []byte { return elf64test.Note(name, typ, desc) }

// synthELF builds an ELF64 x86-64 executable with PT_LOAD segments and a
// PT_NOTE holding a GNU note and (unless noNote) Xen's PHYS32_ENTRY.
func synthELF(s elfSpec) []byte {
	if s.segs == nil {
		s.segs = []elfSeg{{0x1000000, bytes.Repeat([]byte{0x90, 0xf4}, 2048), 0x2000}}
	}
	if s.entry == 0 {
		s.entry = s.segs[0].paddr
	}
	notes := elfNote("GNU", 3, make([]byte, 20))
	if !s.noNote {
		notes = append(notes, elf64test.PVHNote(s.entry, s.desc8)...)
	}
	f := elf64test.File{Entry: 0xffffffff81000000}
	for _, sg := range s.segs {
		f.Progs = append(f.Progs, elf64test.Prog{Type: elf64test.PTLoad, Paddr: sg.paddr, Memsz: sg.memsz, Data: sg.data,
			Filesz: uint64(len(sg.data))})
	}
	f.Progs = append(f.Progs, elf64test.Prog{Type: elf64test.PTNote, Memsz: uint64(len(notes)), Data: notes})
	return f.Bytes()
}

func TestLoadPVH(t *testing.T) {
	text := bytes.Repeat([]byte{0xcc}, 3000)
	data := bytes.Repeat([]byte{0x11}, 100)
	k := synthELF(elfSpec{segs: []elfSeg{{0x1000000, text, 0x1000}, {0x1400000, data, 0x3000}}, entry: 0x1000010, desc8: true})
	m := newMem(64 << 20)
	// The .bss part must be zeroed.
	if _, err := m.WriteAt(bytes.Repeat([]byte{0xff}, 0x3000), 0x1400000); err != nil {
		t.Fatal(err)
	}
	initrd := bytes.Repeat([]byte{0xab}, 5000)
	e, err := ld(tp{Kernel: k, KernelPath: "vmlinux", Initrd: initrd, Cmdline: "console=hvc0", CPUs: 3, Mem: m, ACPI: true})
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != PVH || e.KernelEnd != 0x1403000 || e.RSDP != AddrACPI {
		t.Fatalf("entry %+v", e)
	}
	if !bytes.Equal(read(t, m, 0x1000000, 3000), text) || !bytes.Equal(read(t, m, 0x1400000, 100), data) ||
		!bytes.Equal(read(t, m, 0x1400000+100, 0x3000-100), make([]byte, 0x3000-100)) {
		t.Fatal("segments not loaded at p_paddr with .bss zeroed")
	}
	st := e.BSP
	if st.RIP != 0x1000010 || st.RBX != AddrStartInfo || st.CR0 != cr0PE|cr0ET || st.CR4 != 0 || st.EFER != 0 ||
		st.CR3 != 0 || st.RFLAGS != 2 {
		t.Fatalf("CPU state %+v", st)
	}
	if st.CS.Selector != 0x08 || st.CS.DB != 1 || st.CS.L != 0 || st.CS.G != 1 || st.CS.Limit != 0xffffffff || st.CS.Base != 0 ||
		st.DS.Selector != 0x10 || st.DS.DB != 1 || st.DS.Limit != 0xffffffff {
		t.Fatalf("segments CS %+v DS %+v", st.CS, st.DS)
	}
	checkGDT(t, m, st)

	le := binary.LittleEndian
	si := read(t, m, AddrStartInfo, 0x80+4*memmapEntrySize)
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"magic", uint64(le.Uint32(si[siMagic:])), startInfoMagic},
		{"version", uint64(le.Uint32(si[siVersion:])), 1},
		{"nr_modules", uint64(le.Uint32(si[siNrModules:])), 1},
		{"cmdline_paddr", le.Uint64(si[siCmdlinePaddr:]), AddrCmdline},
		{"rsdp_paddr", le.Uint64(si[siRSDPPaddr:]), AddrACPI},
		{"memmap_paddr", le.Uint64(si[siMemmapPaddr:]), addrMemmap},
		{"memmap_entries", uint64(le.Uint32(si[siMemmapEntries:])), 3},
		{"module paddr", le.Uint64(si[0x40+modPaddr:]), e.Initrd[0]},
		{"module size", le.Uint64(si[0x40+modSize:]), 5000},
		{"memmap[2].addr", le.Uint64(si[0x80+2*memmapEntrySize:]), HighMemStart},
		{"memmap[2].size", le.Uint64(si[0x80+2*memmapEntrySize+memmapSize:]), 63 << 20},
		{"memmap[1].type", uint64(le.Uint32(si[0x80+memmapEntrySize+memmapType:])), e820Reserved},
	} {
		if c.got != c.want {
			t.Errorf("start_info %s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if le.Uint64(si[siModlistPaddr:]) != addrModlist || e.Initrd[0] < e.KernelEnd || e.Initrd[0]%4096 != 0 {
		t.Errorf("initrd at %#x, module list at %#x", e.Initrd[0], le.Uint64(si[siModlistPaddr:]))
	}
	if !bytes.Equal(read(t, m, e.Initrd[0], 5000), initrd) {
		t.Error("initrd content")
	}
	if cl := read(t, m, AddrCmdline, 13); string(cl) != "console=hvc0\x00" {
		t.Errorf("cmdline %q", cl)
	}
}

func TestPVHNoInitrdNoACPI(t *testing.T) {
	m := newMem(32 << 20)
	e, err := ld(tp{Kernel: synthELF(elfSpec{}), CPUs: 1, Mem: m})
	if err != nil {
		t.Fatal(err)
	}
	si := read(t, m, AddrStartInfo, startInfoSize)
	if binary.LittleEndian.Uint32(si[siNrModules:]) != 0 || binary.LittleEndian.Uint64(si[siModlistPaddr:]) != 0 ||
		binary.LittleEndian.Uint64(si[siRSDPPaddr:]) != 0 || e.Initrd != [2]uint64{} || e.RSDP != 0 {
		t.Fatalf("start_info claims modules or ACPI: %x", si)
	}
}

func TestBadELF(t *testing.T) {
	big := make([]byte, 16)
	cases := []struct {
		name string
		k    []byte
		want error
		msg  string
	}{
		{"no note", synthELF(elfSpec{noNote: true}), ErrNoPVHEntry, "ELF vmlinux has no PVH entry note"},
		{"segment outside RAM", synthELF(elfSpec{segs: []elfSeg{{0x10000000, big, 0x1000}}}), ErrNoRoom, "outside guest RAM"},
		{"segment across the end of RAM", synthELF(elfSpec{segs: []elfSeg{{0x1fff000, big, 0x2000}}}), ErrNoRoom, "outside guest RAM"},
		{"segment below 1 MiB", synthELF(elfSpec{segs: []elfSeg{{0x8000, big, 0x1000}}}), ErrUnsupported, "below 1 MiB"},
		{"filesz > memsz", synthELF(elfSpec{segs: []elfSeg{{0x1000000, big, 8}}}), ErrUnsupported, "file size 16 > memory size 8"},
		{"overlapping segments", synthELF(elfSpec{segs: []elfSeg{{0x1000000, big, 0x2000}, {0x1001000, big, 0x100}}}), ErrUnsupported, "overlap"},
		{"wrapping segment", synthELF(elfSpec{segs: []elfSeg{{0x1000000, big, 1 << 63}, {1 << 63, big, 1 << 63}}}), ErrUnsupported, "wraps"},
		{"entry outside segments", synthELF(elfSpec{entry: 0x500000}), ErrUnsupported, "outside every loadable"},
		{"entry above 4 GiB", synthELF(elfSpec{entry: 1 << 33, desc8: true}), ErrUnsupported, "above 4 GiB"},
		{"no segments", synthELF(elfSpec{segs: []elfSeg{}, entry: 1}), ErrUnsupported, "no loadable segments"},
	}
	for _, c := range cases {
		_, err := ld(tp{Kernel: c.k, KernelPath: "vmlinux", CPUs: 1, Mem: newMem(32 << 20)})
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) || !strings.HasPrefix(err.Error(), "kernel vmlinux: ") {
			t.Errorf("%s: Load = %v, want %v containing %q", c.name, err, c.want, c.msg)
		}
	}
}

func TestPVHNote(t *testing.T) {
	le := binary.LittleEndian
	b := append(elfNote("GNU", 3, make([]byte, 20)), elfNote("Xen", 18, []byte{0x00, 0x10, 0x00, 0x01})...)
	cases := []struct {
		name  string
		b     []byte
		entry uint32
		ok    bool
		err   bool
	}{
		{"4-byte value after another note", b, 0x01001000, true, false},
		{"8-byte value", elfNote("Xen", 18, le.AppendUint64(nil, 0x1000200)), 0x1000200, true, false},
		{"truncated", b[:len(b)-3], 0, false, false},
		{"other Xen note", elfNote("Xen", 17, make([]byte, 4)), 0, false, false},
		{"wrong owner", elfNote("Xem", 18, make([]byte, 4)), 0, false, false},
		{"odd value size", elfNote("Xen", 18, make([]byte, 2)), 0, false, true},
		{"empty", nil, 0, false, false},
	}
	for _, c := range cases {
		e, ok, err := findPVHNote(c.b)
		if e != c.entry || ok != c.ok || (err != nil) != c.err {
			t.Errorf("%s: got %#x %v %v", c.name, e, ok, err)
		}
	}
}
