package elf64

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
)

// sec is a section for build.
type sec struct {
	name  string
	typ   uint32
	flags uint64
	data  []byte
	size  uint64 // header size if non-zero (may exceed len(data))
}

// build makes an ELF64 x86-64 file with the given program headers and
// sections (a name table is added last).
func build(progs []Prog, secs []sec) []byte {
	le := binary.LittleEndian
	f := make([]byte, headerSize)
	copy(f, "\x7fELF")
	f[4], f[5], f[6] = classELF64, dataLSB, 1
	le.PutUint16(f[16:], 2)
	le.PutUint16(f[18:], MachineX86_64)
	if len(progs) > 0 {
		le.PutUint64(f[32:], uint64(len(f)))
		le.PutUint16(f[54:], phentSize)
		le.PutUint16(f[56:], uint16(len(progs)))
		for _, p := range progs {
			b := make([]byte, phentSize)
			le.PutUint32(b[0:], p.Type)
			le.PutUint32(b[4:], p.Flags)
			le.PutUint64(b[8:], p.Off)
			le.PutUint64(b[16:], p.Vaddr)
			le.PutUint64(b[24:], p.Paddr)
			le.PutUint64(b[32:], p.Filesz)
			le.PutUint64(b[40:], p.Memsz)
			f = append(f, b...)
		}
	}
	if len(secs) == 0 {
		return f
	}
	names := []byte{0}
	all := append([]sec{{}}, secs...)
	all = append(all, sec{name: ".shstrtab", typ: 3})
	offs := make([]uint32, len(all))
	for i, s := range all {
		if i == 0 {
			continue
		}
		offs[i] = uint32(len(names))
		names = append(names, s.name...)
		names = append(names, 0)
	}
	all[len(all)-1].data = names
	dataOff := make([]uint64, len(all))
	for i, s := range all {
		dataOff[i] = uint64(len(f))
		f = append(f, s.data...)
	}
	le.PutUint64(f[40:], uint64(len(f)))
	le.PutUint16(f[58:], shentSize)
	le.PutUint16(f[60:], uint16(len(all)))
	le.PutUint16(f[62:], uint16(len(all)-1))
	for i, s := range all {
		b := make([]byte, shentSize)
		size := s.size
		if size == 0 {
			size = uint64(len(s.data))
		}
		le.PutUint32(b[0:], offs[i])
		le.PutUint32(b[4:], s.typ)
		le.PutUint64(b[8:], s.flags)
		le.PutUint64(b[24:], dataOff[i])
		le.PutUint64(b[32:], size)
		f = append(f, b...)
	}
	return f
}

func TestOpenAndSections(t *testing.T) {
	elf := build([]Prog{{Type: PTLoad, Off: 0, Paddr: 0x100000, Filesz: 64, Memsz: 128}},
		[]sec{{name: ".modinfo", typ: 1, data: []byte("depends=a,b\x00")}})
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
// bomb: an 8 KiB file whose section header claims a 256 MiB compressed
// section made debug/elf allocate over a gigabyte on open. Opening it,
// listing its sections and asking for the data must stay small and refuse.
func TestCompressedSectionBomb(t *testing.T) {
	chdr := make([]byte, 24) // Elf64_Chdr: zlib, 256 MiB uncompressed
	binary.LittleEndian.PutUint32(chdr[0:], 1)
	binary.LittleEndian.PutUint64(chdr[8:], 256<<20)
	elf := build(nil, []sec{
		{name: ".note.bomb", typ: SHTNote, flags: SHFCompressed, data: append(chdr, make([]byte, 8000)...)},
		{name: ".huge", typ: 1, data: nil, size: 64 << 30},
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
}

func TestBadFiles(t *testing.T) {
	good := build([]Prog{{Type: PTLoad, Filesz: 8, Memsz: 8}}, []sec{{name: ".a", typ: 1, data: []byte("x")}})
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
		[]sec{{name: ".note", typ: SHTNote, data: make([]byte, 20)}}))
	f.Add(build(nil, []sec{{name: ".modinfo", typ: 1, data: []byte("depends=\x00")}}))
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
