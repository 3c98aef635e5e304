// Package elf64test builds small little-endian ELF64 x86-64 files for
// tests: kernels with PT_LOAD and PT_NOTE segments, modules with named
// sections, and malformed variants (headers claiming more than the file
// holds, compressed sections).
package elf64test

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
)

// Header sizes and types.
const (
	headerSize = 64
	phentSize  = 56
	shentSize  = 64

	ETRel  = 1
	ETExec = 2

	PTLoad = 1
	PTNote = 4

	SHTProgbits   = 1
	SHTStrtab     = 3
	SHTNote       = 7
	SHFCompressed = 1 << 11

	xenPhys32Entry = 18 // XEN_ELFNOTE_PHYS32_ENTRY
)

// Prog is a program header. With Data set, Data is placed in the file and
// Off and Filesz (if zero) describe it; otherwise Off and Filesz are
// written as given.
type Prog struct {
	Type          uint32
	Off           uint64
	Paddr         uint64
	Filesz, Memsz uint64
	Data          []byte
}

// Section is a section header with a name. Data is placed in the file;
// Size, if non-zero, is what the header claims instead of len(Data).
type Section struct {
	Name  string
	Type  uint32
	Flags uint64
	Data  []byte
	Size  uint64
}

// File describes a whole file. A name table (.shstrtab) is added when
// there are sections.
type File struct {
	Type     uint16 // ETExec by default
	Entry    uint64
	Progs    []Prog
	Sections []Section
	// BombNames, if non-zero, makes the name table a compressed section
	// whose header claims BombNames bytes (its names are then unreadable).
	BombNames uint64
}

// Bytes lays the file out: header, program headers, segment data, section
// data, name table, section headers.
func (f File) Bytes() []byte {
	le := binary.LittleEndian
	typ := f.Type
	if typ == 0 {
		typ = ETExec
	}
	b := make([]byte, headerSize+phentSize*len(f.Progs))
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // ELFCLASS64, little-endian, version 1
	le.PutUint16(b[16:], typ)
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], f.Entry)
	le.PutUint16(b[52:], headerSize)
	if len(f.Progs) > 0 {
		le.PutUint64(b[32:], headerSize)
		le.PutUint16(b[54:], phentSize)
		le.PutUint16(b[56:], uint16(len(f.Progs)))
	}
	for i, p := range f.Progs {
		if p.Data != nil {
			p.Off = uint64(len(b))
			if p.Filesz == 0 {
				p.Filesz = uint64(len(p.Data))
			}
			b = append(b, p.Data...)
		}
		h := b[headerSize+i*phentSize:]
		le.PutUint32(h[0:], p.Type)
		le.PutUint32(h[4:], 7) // RWX
		le.PutUint64(h[8:], p.Off)
		le.PutUint64(h[16:], p.Paddr)
		le.PutUint64(h[24:], p.Paddr)
		le.PutUint64(h[32:], p.Filesz)
		le.PutUint64(h[40:], p.Memsz)
	}
	if len(f.Sections) == 0 {
		return b
	}
	secs := append([]Section{{}}, f.Sections...)
	names := []byte{0}
	nameOff := make([]uint32, len(secs)+1)
	for i, s := range secs[1:] {
		nameOff[i+1] = uint32(len(names))
		names = append(append(names, s.Name...), 0)
	}
	nameOff[len(secs)] = uint32(len(names))
	names = append(names, ".shstrtab\x00"...)
	if f.BombNames != 0 {
		secs = append(secs, Section{Type: SHTStrtab, Flags: SHFCompressed, Data: CompressedBomb(f.BombNames)})
	} else {
		secs = append(secs, Section{Type: SHTStrtab, Data: names})
	}
	offs := make([]uint64, len(secs))
	for i, s := range secs {
		offs[i] = uint64(len(b))
		b = append(b, s.Data...)
	}
	le.PutUint64(b[40:], uint64(len(b)))
	le.PutUint16(b[58:], shentSize)
	le.PutUint16(b[60:], uint16(len(secs)))
	le.PutUint16(b[62:], uint16(len(secs)-1))
	for i, s := range secs {
		h := make([]byte, shentSize)
		size := s.Size
		if size == 0 {
			size = uint64(len(s.Data))
		}
		if i > 0 {
			le.PutUint32(h[0:], nameOff[i])
		}
		le.PutUint32(h[4:], s.Type)
		le.PutUint64(h[8:], s.Flags)
		le.PutUint64(h[24:], offs[i])
		le.PutUint64(h[32:], size)
		b = append(b, h...)
	}
	return b
}

// Note encodes one ELF note: namesz, descsz, type, then the name and the
// descriptor, each padded to four bytes.
func Note(name string, typ uint32, desc []byte) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, uint32(len(name)+1))
	b = le.AppendUint32(b, uint32(len(desc)))
	b = le.AppendUint32(b, typ)
	n := append([]byte(name), 0)
	for len(n)%4 != 0 {
		n = append(n, 0)
	}
	b = append(b, n...)
	b = append(b, desc...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// PVHNote is Xen's PHYS32_ENTRY note for entry, as 4 bytes (or 8, as
// Linux's _ASM_PTR emits it).
func PVHNote(entry uint64, eight bool) []byte {
	if eight {
		return Note("Xen", xenPhys32Entry, binary.LittleEndian.AppendUint64(nil, entry))
	}
	return Note("Xen", xenPhys32Entry, binary.LittleEndian.AppendUint32(nil, uint32(entry)))
}

// CompressedBomb is the data of a compressed section: an Elf64_Chdr
// (zlib) claiming uncompressed bytes, then a valid zlib stream that does
// inflate to that many zero bytes (about a thousandth of the size).
func CompressedBomb(uncompressed uint64) []byte {
	b := make([]byte, 24)
	binary.LittleEndian.PutUint32(b[0:], 1) // ELFCOMPRESS_ZLIB
	binary.LittleEndian.PutUint64(b[8:], uncompressed)
	var z bytes.Buffer
	w, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
	zero := make([]byte, 1<<20)
	for left := uncompressed; left > 0; {
		n := min(left, uint64(len(zero)))
		_, _ = w.Write(zero[:n])
		left -= n
	}
	_ = w.Close()
	return append(b, z.Bytes()...)
}
