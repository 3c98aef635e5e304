// Package elf64 reads the parts of a little-endian ELF64 file that booting a
// kernel or listing a module's dependencies needs: the header, program
// headers, section headers and raw section or segment bytes. Unlike
// debug/elf it never inflates compressed sections, and every allocation is
// bounded by the file's real size (and by the caller's limit), so a small
// hostile file cannot make its reader allocate gigabytes (System V ABI,
// "ELF Header", "Program Header", "Sections").
package elf64

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrFormat is wrapped by every error about the file's contents.
var ErrFormat = errors.New("malformed ELF file")

// Header fields and constants.
const (
	headerSize = 64
	phentSize  = 56
	shentSize  = 64

	classELF64 = 2
	dataLSB    = 1

	// MachineX86_64 is EM_X86_64.
	MachineX86_64 = 62

	// Program header types.
	PTLoad = 1
	PTNote = 4

	// Section header types and flags.
	SHTNote       = 7
	SHTNoBits     = 8
	SHFCompressed = 1 << 11

	// maxHeaders bounds program and section header counts (e_phnum and
	// e_shnum are 16-bit; extended numbering is refused).
	maxHeaders = 0xff00
	maxName    = 256
)

// Prog is a program header.
type Prog struct {
	Type, Flags                      uint32
	Off, Vaddr, Paddr, Filesz, Memsz uint64
}

// Section is a section header with its name resolved.
type Section struct {
	Name       string
	Type       uint32
	Flags      uint64
	Off, Size  uint64
	nameOffset uint32
}

// File is an opened ELF64 file.
type File struct {
	r       io.ReaderAt
	size    int64
	Type    uint16
	Machine uint16
	Entry   uint64
	Progs   []Prog
	shoff   uint64
	shnum   int
	shstrnd int
}

// IsELF reports whether b starts with the ELF magic.
func IsELF(b []byte) bool { return len(b) >= 4 && string(b[:4]) == "\x7fELF" }

func errorf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, a...))
}

// Open reads the header and program headers of the size-byte file r.
func Open(r io.ReaderAt, size int64) (*File, error) {
	var h [headerSize]byte
	if size < headerSize {
		return nil, errorf("%d bytes is shorter than an ELF header", size)
	}
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("ELF header: %w", err)
	}
	if !IsELF(h[:]) {
		return nil, errorf("no ELF magic")
	}
	if h[4] != classELF64 || h[5] != dataLSB {
		return nil, errorf("class %d, data %d: only little-endian ELF64 is supported", h[4], h[5])
	}
	le := binary.LittleEndian
	f := &File{r: r, size: size, Type: le.Uint16(h[16:]), Machine: le.Uint16(h[18:]), Entry: le.Uint64(h[24:])}
	phoff, shoff := le.Uint64(h[32:]), le.Uint64(h[40:])
	phentsize, phnum := le.Uint16(h[54:]), int(le.Uint16(h[56:]))
	shentsize, shnum, shstrndx := le.Uint16(h[58:]), int(le.Uint16(h[60:])), int(le.Uint16(h[62:]))
	if phnum > 0 {
		if phentsize != phentSize || phnum > maxHeaders {
			return nil, errorf("%d program headers of %d bytes", phnum, phentsize)
		}
		b, err := f.bytes(phoff, uint64(phnum)*phentSize, "program headers")
		if err != nil {
			return nil, err
		}
		for i := 0; i < phnum; i++ {
			p := b[i*phentSize:]
			f.Progs = append(f.Progs, Prog{
				Type: le.Uint32(p[0:]), Flags: le.Uint32(p[4:]), Off: le.Uint64(p[8:]),
				Vaddr: le.Uint64(p[16:]), Paddr: le.Uint64(p[24:]), Filesz: le.Uint64(p[32:]), Memsz: le.Uint64(p[40:]),
			})
		}
	}
	if shnum > 0 {
		if shentsize != shentSize || shnum > maxHeaders || shstrndx >= shnum {
			return nil, errorf("%d section headers of %d bytes, names in section %d", shnum, shentsize, shstrndx)
		}
		if !f.inFile(shoff, uint64(shnum)*shentSize) {
			return nil, errorf("section headers at %d+%d are past the end of the %d-byte file", shoff, shnum*shentSize, size)
		}
		f.shoff, f.shnum, f.shstrnd = shoff, shnum, shstrndx
	}
	return f, nil
}

// Size is the file's size.
func (f *File) Size() int64 { return f.size }

// inFile reports whether [off, off+n) lies inside the file.
func (f *File) inFile(off, n uint64) bool {
	return off+n >= off && off+n <= uint64(f.size)
}

// bytes reads n bytes at off, which must lie inside the file.
func (f *File) bytes(off, n uint64, what string) ([]byte, error) {
	if !f.inFile(off, n) {
		return nil, errorf("%s at %d+%d are past the end of the %d-byte file", what, off, n, f.size)
	}
	b := make([]byte, n)
	if _, err := f.r.ReadAt(b, int64(off)); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}

// Sections reads the section headers and their names.
func (f *File) Sections() ([]Section, error) {
	if f.shnum == 0 {
		return nil, nil
	}
	b, err := f.bytes(f.shoff, uint64(f.shnum)*shentSize, "section headers")
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	ss := make([]Section, f.shnum)
	for i := range ss {
		s := b[i*shentSize:]
		ss[i] = Section{nameOffset: le.Uint32(s[0:]), Type: le.Uint32(s[4:]), Flags: le.Uint64(s[8:]),
			Off: le.Uint64(s[24:]), Size: le.Uint64(s[32:])}
	}
	names := ss[f.shstrnd]
	if names.Type == SHTNoBits || names.Flags&SHFCompressed != 0 || !f.inFile(names.Off, names.Size) {
		return nil, errorf("section name table at %d+%d is not a plain section inside the file", names.Off, names.Size)
	}
	for i := range ss {
		n, err := f.cstring(names, ss[i].nameOffset)
		if err != nil {
			return nil, err
		}
		ss[i].Name = n
	}
	return ss, nil
}

// cstring reads a NUL-terminated name of at most maxName bytes at off in
// the string table section t.
func (f *File) cstring(t Section, off uint32) (string, error) {
	if uint64(off) >= t.Size {
		return "", errorf("section name offset %d outside the %d-byte name table", off, t.Size)
	}
	n := min(t.Size-uint64(off), maxName)
	b := make([]byte, n)
	if _, err := f.r.ReadAt(b, int64(t.Off+uint64(off))); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), nil
		}
	}
	return "", errorf("section name at offset %d is not terminated within %d bytes", off, n)
}

// Data returns a plain section's bytes, refusing compressed sections and
// sections larger than limit.
func (f *File) Data(s Section, limit uint64) ([]byte, error) {
	if s.Type == SHTNoBits {
		return nil, nil
	}
	if s.Flags&SHFCompressed != 0 {
		return nil, errorf("section %s is compressed", s.Name)
	}
	if s.Size > limit {
		return nil, errorf("section %s is %d bytes, more than the %d expected", s.Name, s.Size, limit)
	}
	return f.bytes(s.Off, s.Size, "section "+s.Name)
}

// ProgData returns the file bytes of program header p (Filesz bytes),
// refusing more than limit.
func (f *File) ProgData(p Prog, limit uint64) ([]byte, error) {
	if p.Filesz > limit {
		return nil, errorf("segment at file offset %d is %d bytes, more than the %d expected", p.Off, p.Filesz, limit)
	}
	return f.bytes(p.Off, p.Filesz, "segment")
}

// InFile reports whether the segment p's file bytes lie inside the file.
func (f *File) InFile(p Prog) bool { return f.inFile(p.Off, p.Filesz) }

// ReaderAt is the underlying file.
func (f *File) ReaderAt() io.ReaderAt { return f.r }
