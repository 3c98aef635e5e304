package vmm

import (
	"encoding/binary"

	"github.com/ember-vmm/ember/boot/elf64/elf64test"
)

// pvhELF builds a minimal ELF vmlinux for the PVH entry: code is loaded at
// guestCode and entered in 32-bit protected mode, paging off (Xen's
// pvh.pandoc).
func pvhELF(code []byte) []byte {
	note := elf64test.PVHNote(guestCode, false)
	return elf64test.File{Progs: []elf64test.Prog{
		{Type: elf64test.PTLoad, Paddr: guestCode, Memsz: 0x10000, Data: code},
		{Type: elf64test.PTNote, Memsz: uint64(len(note)), Data: note},
	}}.Bytes()
}

// guestCode is where test guests run (16 MiB, above the boot tables).
const guestCode = 0x100_0000

// Snippets of 32-bit code for test guests.
var (
	cliHlt = []byte{0xfa, 0xf4}
	spin   = []byte{0xeb, 0xfe} // jmp $
)

// outb is "mov dx, port; mov al, v; out dx, al" in 32-bit mode.
func outb(port uint16, v byte) []byte {
	return []byte{0x66, 0xba, byte(port), byte(port >> 8), 0xb0, v, 0xee}
}

// printThenHalt writes msg to COM1 one byte at a time, then halts with
// interrupts off, as a kernel without ACPI does on "poweroff -f".
func printThenHalt(msg string) []byte {
	var code []byte
	for i := 0; i < len(msg); i++ {
		code = append(code, outb(0x3f8, msg[i])...)
	}
	return append(code, cliHlt...)
}

// printLoop writes n copies of line to COM1 (with a counter in ECX), then
// reports status through ember's control port.
func printLoop(line string, n uint32, status byte) []byte {
	code := []byte{0xb9}
	code = binary.LittleEndian.AppendUint32(code, n) // mov ecx, n
	loop := len(code)
	for i := 0; i < len(line); i++ {
		code = append(code, outb(0x3f8, line[i])...)
	}
	code = append(code, 0x49) // dec ecx (32-bit: 0x49)
	rel := loop - (len(code) + 6)
	code = append(code, 0x0f, 0x85) // jnz rel32
	code = binary.LittleEndian.AppendUint32(code, uint32(int32(rel)))
	code = append(code, outb(0x0ff0, status)...)
	return append(code, cliHlt...)
}
