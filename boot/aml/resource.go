package aml

import "encoding/binary"

// Resource descriptors (ACPI 6.4 §6.4). Each function returns one
// descriptor; ResourceTemplate wraps them in a buffer with the end tag.
const (
	tagIRQNoFlags    = 0x22 // small item 0x04, length 2
	tagIO            = 0x47 // small item 0x08, length 7
	tagEnd           = 0x79 // small item 0x0f, length 1
	tagMemory32Fixed = 0x86 // large item 0x06
	tagExtendedIRQ   = 0x89 // large item 0x09

	ioDecode16 = 1 << 0
)

// ResourceTemplate is a Buffer of the descriptors followed by an end tag
// whose checksum byte is 0 ("treated as if the checksum is valid",
// §6.4.2.9).
func ResourceTemplate(descs ...[]byte) []byte {
	return Buffer(append(concat(descs), tagEnd, 0))
}

// IO is an I/O port descriptor (§6.4.2.5) with 16-bit decoding: length
// ports from min (a fixed range when min == max).
func IO(min, max uint16, align, length uint8) []byte {
	b := []byte{tagIO, ioDecode16}
	b = binary.LittleEndian.AppendUint16(b, min)
	b = binary.LittleEndian.AppendUint16(b, max)
	return append(b, align, length)
}

// IRQNoFlags is the two-byte IRQ descriptor (§6.4.2.1): edge-triggered,
// active-high, exclusive ISA IRQs below 16.
func IRQNoFlags(irqs ...uint8) []byte {
	var mask uint16
	for _, i := range irqs {
		if i > 15 {
			panic("aml: IRQNoFlags takes ISA IRQs 0-15")
		}
		mask |= 1 << i
	}
	return binary.LittleEndian.AppendUint16([]byte{tagIRQNoFlags}, mask)
}

// Memory32Fixed is a fixed 32-bit memory range descriptor (§6.4.3.4).
func Memory32Fixed(writable bool, base, length uint32) []byte {
	b := binary.LittleEndian.AppendUint16([]byte{tagMemory32Fixed}, 9)
	info := byte(0)
	if writable {
		info = 1
	}
	b = append(b, info)
	b = binary.LittleEndian.AppendUint32(b, base)
	return binary.LittleEndian.AppendUint32(b, length)
}

// Trigger and polarity of an interrupt (§6.4.3.6).
const (
	EdgeTriggered  = true
	LevelTriggered = false
	ActiveHigh     = false
	ActiveLow      = true
)

// Interrupt is an extended interrupt descriptor (§6.4.3.6) for one global
// system interrupt the device consumes, exclusive.
func Interrupt(edge, activeLow bool, gsi uint32) []byte {
	flags := byte(1) // consumer
	if edge {
		flags |= 1 << 1
	}
	if activeLow {
		flags |= 1 << 2
	}
	b := binary.LittleEndian.AppendUint16([]byte{tagExtendedIRQ}, 6)
	b = append(b, flags, 1) // one interrupt
	return binary.LittleEndian.AppendUint32(b, gsi)
}
