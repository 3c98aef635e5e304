// Package aml encodes the small part of ACPI Machine Language ember's DSDT
// needs: names, scopes, devices, integers, strings, packages, buffers and
// resource templates (ACPI 6.4 chapter 20, "ACPI Machine Language
// Specification", and §6.4, "Resource Data Types for ACPI").
//
// Every function returns the encoded bytes of one term; terms nest by
// passing them as arguments. Names come from ember's own platform table,
// never from user input or the guest, so a malformed name is a programming
// error and panics.
package aml

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Opcodes and prefixes (ACPI 6.4 §20.3).
const (
	zeroOp        = 0x00
	oneOp         = 0x01
	nameOp        = 0x08
	bytePrefix    = 0x0a
	wordPrefix    = 0x0b
	dwordPrefix   = 0x0c
	stringPrefix  = 0x0d
	qwordPrefix   = 0x0e
	scopeOp       = 0x10
	bufferOp      = 0x11
	packageOp     = 0x12
	methodOp      = 0x14
	returnOp      = 0xa4
	onesOp        = 0xff
	extOpPrefix   = 0x5b
	deviceOp      = 0x82 // after extOpPrefix
	dualNamePfx   = 0x2e
	multiNamePfx  = 0x2f
	rootChar      = '\\'
	parentPfxChar = '^'
)

// PkgLength encodes the length of a package whose content is n bytes long
// (§20.2.4): the encoded length counts its own bytes too. Up to 63 fits in
// one byte; otherwise bits 7-6 of the lead byte give the number of extra
// bytes, its low nibble the lowest four bits, the extra bytes the rest.
// Lengths of 2^28 and more have no encoding: nil.
func PkgLength(n int) []byte {
	if n < 0 {
		return nil
	}
	if n+1 < 1<<6 {
		return []byte{byte(n + 1)}
	}
	for extra := 1; extra <= 3; extra++ {
		total := n + 1 + extra
		if total < 1<<(4+8*extra) {
			b := []byte{byte(extra<<6) | byte(total&0xf)}
			for i := 0; i < extra; i++ {
				b = append(b, byte(total>>(4+8*i)))
			}
			return b
		}
	}
	return nil
}

// pkg prefixes content with its PkgLength.
func pkg(content []byte) []byte {
	l := PkgLength(len(content))
	if l == nil {
		panic(fmt.Sprintf("aml: package of %d bytes is too long", len(content)))
	}
	return append(l, content...)
}

func nameSegOK(s string) bool {
	if len(s) != 4 {
		return false
	}
	for i := 0; i < 4; i++ {
		c := s[i]
		lead := c == '_' || (c >= 'A' && c <= 'Z')
		if !lead && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// NamePath encodes a name such as "COM1", `\_SB_.COM1` or "^PCI0"
// (§20.2.2): an optional root or parent prefix, then name segments of
// exactly four characters (pad with '_') separated by dots.
func NamePath(path string) []byte {
	var b []byte
	rest := path
	if strings.HasPrefix(rest, `\`) {
		b = append(b, rootChar)
		rest = rest[1:]
	}
	for strings.HasPrefix(rest, "^") {
		b = append(b, parentPfxChar)
		rest = rest[1:]
	}
	if rest == "" {
		return append(b, zeroOp) // NullName
	}
	segs := strings.Split(rest, ".")
	for _, s := range segs {
		if !nameSegOK(s) {
			panic(fmt.Sprintf("aml: %q: name segment %q is not four characters of [A-Z0-9_] starting with a letter or '_'", path, s))
		}
	}
	switch len(segs) {
	case 1:
	case 2:
		b = append(b, dualNamePfx)
	default:
		if len(segs) > 255 {
			panic(fmt.Sprintf("aml: %q has too many segments", path))
		}
		b = append(b, multiNamePfx, byte(len(segs)))
	}
	for _, s := range segs {
		b = append(b, s...)
	}
	return b
}

func concat(terms [][]byte) []byte {
	var b []byte
	for _, t := range terms {
		b = append(b, t...)
	}
	return b
}

// Scope is DefScope (§20.2.5.1): terms placed in the namespace at path.
func Scope(path string, terms ...[]byte) []byte {
	return append([]byte{scopeOp}, pkg(append(NamePath(path), concat(terms)...))...)
}

// Device is DefDevice (§20.2.5.2).
func Device(name string, terms ...[]byte) []byte {
	return append([]byte{extOpPrefix, deviceOp}, pkg(append(NamePath(name), concat(terms)...))...)
}

// Name is DefName (§20.2.5.1): name bound to the data object obj.
func Name(name string, obj []byte) []byte {
	return append(append([]byte{nameOp}, NamePath(name)...), obj...)
}

// Method is DefMethod (§20.2.5.2) with no arguments, not serialized, whose
// body is terms.
func Method(name string, terms ...[]byte) []byte {
	body := append(NamePath(name), 0) // MethodFlags: 0 args, NotSerialized, SyncLevel 0
	return append([]byte{methodOp}, pkg(append(body, concat(terms)...))...)
}

// Return is DefReturn (§20.2.5.3).
func Return(obj []byte) []byte { return append([]byte{returnOp}, obj...) }

// Int encodes an integer constant in its shortest form (§20.2.3): Zero,
// One, or a byte, word, dword or qword constant. (Ones is never chosen:
// its value depends on the table revision.)
func Int(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{zeroOp}
	case v == 1:
		return []byte{oneOp}
	case v <= 0xff:
		return []byte{bytePrefix, byte(v)}
	case v <= 0xffff:
		return binary.LittleEndian.AppendUint16([]byte{wordPrefix}, uint16(v))
	case v <= 0xffff_ffff:
		return binary.LittleEndian.AppendUint32([]byte{dwordPrefix}, uint32(v))
	}
	return binary.LittleEndian.AppendUint64([]byte{qwordPrefix}, v)
}

// DWord encodes v as a DWordConst whatever its size (EISA IDs are written
// this way by convention).
func DWord(v uint32) []byte { return binary.LittleEndian.AppendUint32([]byte{dwordPrefix}, v) }

// String encodes an ASCII string constant (§20.2.3); s must not contain NUL.
func String(s string) []byte {
	if strings.IndexByte(s, 0) >= 0 {
		panic("aml: string with NUL")
	}
	return append(append([]byte{stringPrefix}, s...), 0)
}

// EISAID is the compressed EISA ID of a PnP identifier such as "PNP0501"
// (§6.1.5): three letters in five bits each, then four hex digits, stored
// big-endian in a DWordConst.
func EISAID(id string) []byte {
	if len(id) != 7 {
		panic(fmt.Sprintf("aml: EISA ID %q is not 7 characters", id))
	}
	var v uint32
	for i := 0; i < 3; i++ {
		c := id[i]
		if c < 'A' || c > 'Z' {
			panic(fmt.Sprintf("aml: EISA ID %q: %q is not an uppercase letter", id, c))
		}
		v = v<<5 | uint32(c-'@')
	}
	for i := 3; i < 7; i++ {
		var d uint32
		switch c := id[i]; {
		case c >= '0' && c <= '9':
			d = uint32(c - '0')
		case c >= 'A' && c <= 'F':
			d = uint32(c-'A') + 10
		default:
			panic(fmt.Sprintf("aml: EISA ID %q: %q is not a hex digit", id, c))
		}
		v = v<<4 | d
	}
	// The ID is stored most significant byte first.
	return DWord(v>>24 | v>>8&0xff00 | v<<8&0xff0000 | v<<24)
}

// Package is DefPackage (§20.2.5.4) of up to 255 elements.
func Package(elems ...[]byte) []byte {
	if len(elems) > 255 {
		panic("aml: package of more than 255 elements")
	}
	return append([]byte{packageOp}, pkg(append([]byte{byte(len(elems))}, concat(elems)...))...)
}

// Buffer is DefBuffer (§20.2.5.4) holding data.
func Buffer(data []byte) []byte {
	return append([]byte{bufferOp}, pkg(append(Int(uint64(len(data))), data...))...)
}
