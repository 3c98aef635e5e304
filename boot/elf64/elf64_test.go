package elf64

import (
	"bytes"
	"errors"
	"runtime"
	"testing"

	"github.com/ember-vmm/ember/boot/elf64/elf64test"
)

type sec = elf64test.Section

// build makes an ELF64 x86-64 file with the given program headers and
// sections.
func build(progs []Prog, secs []sec) []byte {
	var ps []elf64test.Prog
	for _, p := range progs {
		ps = append(ps, elf64test.Prog{Type: p.Type, Off: p.Off, Paddr: p.Paddr, Filesz: p.Filesz, Memsz: p.Memsz})
	}
	return elf64test.File{Progs: ps, Sections: secs}.Bytes()
}

func TestOpenAndSections(t *testing.T) {
	elf := build([]Prog{{Type: PTLoad, Off: 0, Paddr: 0x100000, Filesz: 64, Memsz: 128}},
		[]sec{{Name: ".modinfo", Type: 1, Data: []byte("depends=a,b\x00")}})
	f, err := Open(bytes.NewReader(elf), int64(len(elf)))
	if err != nil {
		t.Fatal(err)
	}
	if f.Machine != MachineX86_64 || len(f.Progs) != 1 || f.Progs[0].Paddr != 0x100000 || f.Progs[0].Memsz != 128 {
		t.Fatalf("file %+v", f)
	}
	ss, err := f.Sections()
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 3 || ss[1].Name != ".modinfo" || ss[2].Name != ".shstrtab" {
		t.Fatalf("sections %+v", ss)
	}
	d, err := f.Data(ss[1], 1<<20)
	if err != nil || string(d) != "depends=a,b\x00" {
		t.Fatalf("Data = %q, %v", d, err)
	}
	if _, err := f.Data(ss[1], 4); err == nil {
		t.Fatal("a section over the limit was read")
	}
}

// TestCompressedSectionBomb is the regression test for the decompression
// bomb: a small file whose compressed sections inflate a thousandfold made
// debug/elf allocate the inflated size. Opening it, listing its sections
// and asking for the data must stay small and refuse.
func TestCompressedSectionBomb(t *testing.T) {
	elf := build(nil, []sec{
		{Name: ".note.bomb", Type: SHTNote, Flags: SHFCompressed, Data: elf64test.CompressedBomb(32 << 20)},
		{Name: ".huge", Type: 1, Size: 64 << 30},
	})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f, err := Open(bytes.NewReader(elf), int64(len(elf)))
	if err != nil {
		t.Fatal(err)
	}
	ss, err := f.Sections()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss[1:3] {
		if _, err := f.Data(s, 1<<40); err == nil || !errors.Is(err, ErrFormat) {
			t.Errorf("section %s: Data = %v, want a format error", s.Name, err)
		}
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Fatalf("reading an %d-byte file allocated %d bytes", len(elf), d)
	}
	// A compressed name table is refused before anything is inflated.
	names := elf64test.File{Sections: []sec{{Name: ".a", Type: 1, Data: []byte("x")}}, BombNames: 32 << 20}.Bytes()
	f, err = Open(bytes.NewReader(names), int64(len(names)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Sections(); !errors.Is(err, ErrFormat) {
		t.Fatalf("compressed name table: %v", err)
	}
}

func TestBadFiles(t *testing.T) {
	good := build([]Prog{{Type: PTLoad, Filesz: 8, Memsz: 8}}, []sec{{Name: ".a", Type: 1, Data: []byte("x")}})
	mutate := func(off int, v []byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], v)
		return b
	}
	for name, b := range map[string][]byte{
		"short":                    good[:40],
		"not ELF":                  mutate(0, []byte("MZ")),
		"32-bit":                   mutate(4, []byte{1}),
		"big-endian":               mutate(5, []byte{2}),
		"program headers past end": mutate(32, []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}),
		"bad phentsize":            mutate(54, []byte{55, 0}),
		"section headers past end": mutate(40, []byte{0xff, 0xff, 0xff, 0}),
		"shstrndx out of range":    mutate(62, []byte{9, 0}),
		"bad shentsize":            mutate(58, []byte{40, 0}),
		"65280+ program headers":   mutate(56, []byte{0x01, 0xff}),
	} {
		_, err := Open(bytes.NewReader(b), int64(len(b)))
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzOpen(f *testing.F) {
	f.Add(build([]Prog{{Type: PTLoad, Filesz: 8, Memsz: 8}, {Type: PTNote, Off: 64, Filesz: 20}},
		[]sec{{Name: ".note", Type: SHTNote, Data: make([]byte, 20)}}))
	f.Add(build(nil, []sec{{Name: ".modinfo", Type: 1, Data: []byte("depends=\x00")}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		file, err := Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		// Each Data call is bounded by the file size; callers read a few.
		ss, err := file.Sections()
		if err == nil {
			for _, s := range ss[:min(len(ss), 8)] {
				_, _ = file.Data(s, 1<<30)
			}
		}
		for _, p := range file.Progs[:min(len(file.Progs), 8)] {
			_, _ = file.ProgData(p, 1<<30)
		}
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > 64*uint64(len(b))+4<<20 {
			t.Fatalf("a %d-byte file made the reader allocate %d bytes", len(b), d)
		}
	})
}
