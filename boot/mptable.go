package boot

import (
	"encoding/binary"

	"github.com/ember-vmm/ember/vmm/memory"
)

// MP table (Intel MultiProcessor Specification 1.4, chapter 4): a floating
// pointer and a configuration table listing every CPU, the ISA bus, the
// I/O APIC and how ISA interrupts reach it (identity, as KVM routes them).
const (
	mpFloatSize   = 16
	mpHeaderSize  = 44
	mpCPUSize     = 20
	mpEntrySize   = 8
	mpSpecRev     = 4
	apicVersion   = 0x14
	ioapicVersion = 0x11
)

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

func writeMPTable(m *memory.Memory, cpus int) error {
	ioapicID := byte(cpus)
	var t []byte
	put := func(b ...byte) { t = append(t, b...) }
	le16 := func(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
	le32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

	t = make([]byte, mpHeaderSize)
	for i := 0; i < cpus; i++ {
		flags := byte(1) // enabled
		if i == 0 {
			flags |= 2 // bootstrap processor
		}
		put(0, byte(i), apicVersion, flags)
		put(le32(0x600)...) // signature: family 6
		put(le32(0x201)...) // features: FPU, APIC
		put(make([]byte, 8)...)
	}
	put(1, 0, 'I', 'S', 'A', ' ', ' ', ' ')
	put(2, ioapicID, ioapicVersion, 1)
	put(le32(IOAPICAddr)...)
	for irq := byte(0); irq < 16; irq++ {
		typ := byte(0) // INT
		put(3, typ)
		put(le16(0)...) // polarity/trigger: conform to the bus (ISA: edge, high)
		put(0, irq, ioapicID, irq)
	}
	put(4, 3, 0, 0, 0, 0, 0xff, 0) // ExtINT → LINT0 of all
	put(4, 1, 0, 0, 0, 0, 0xff, 1) // NMI → LINT1 of all

	copy(t[0:4], "PCMP")
	binary.LittleEndian.PutUint16(t[4:], uint16(len(t)))
	t[6] = mpSpecRev
	copy(t[8:16], "EMBER   ")
	copy(t[16:28], "MICROVM     ")
	binary.LittleEndian.PutUint16(t[34:], uint16(cpus+1+1+16+2))
	binary.LittleEndian.PutUint32(t[36:], LAPICAddr)
	t[7] = checksum(t)

	f := make([]byte, mpFloatSize)
	copy(f[0:4], "_MP_")
	binary.LittleEndian.PutUint32(f[4:], AddrMP+mpFloatSize)
	f[8] = 1 // length in 16-byte units
	f[9] = mpSpecRev
	f[10] = checksum(f)
	if _, err := m.WriteAt(f, AddrMP); err != nil {
		return err
	}
	_, err := m.WriteAt(t, AddrMP+mpFloatSize)
	return err
}
