package aml

import (
	"bytes"
	"testing"
)

func TestPkgLength(t *testing.T) {
	// ACPI 6.4 §20.2.4: the length includes the PkgLength bytes.
	cases := []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x01}},
		{6, []byte{0x07}},
		{62, []byte{0x3f}},
		{63, []byte{0x41, 0x04}},                  // 65 = 0x041
		{0xffd, []byte{0x4f, 0xff}},               // 0xfff, largest 2-byte
		{0xffe, []byte{0x81, 0x00, 0x01}},         // 0x1001
		{0xffffc, []byte{0x8f, 0xff, 0xff}},       // 0xfffff, largest 3-byte
		{0xffffd, []byte{0xc1, 0x00, 0x00, 0x01}}, // 0x100001
		{1 << 28, nil},
		{-1, nil},
	}
	for _, c := range cases {
		if got := PkgLength(c.n); !bytes.Equal(got, c.want) {
			t.Errorf("PkgLength(%d) = % x, want % x", c.n, got, c.want)
		}
	}
}

// Expected bytes below are what iasl 20200925 emits for the ASL in the
// comments.
func TestEncodings(t *testing.T) {
	cases := []struct {
		name string
		got  []byte
		want []byte
	}{
		{
			// Name (\_S5, Package (0x04) {0x05, 0x05, Zero, Zero})
			"S5", Name(`\_S5_`, Package(Int(5), Int(5), Int(0), Int(0))),
			[]byte{0x08, 0x5c, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00},
		},
		{
			// Scope (\_SB) { Device (COM2) { Name (_HID, EisaId ("PNP0501")) Name (_UID, 0x02)
			//   Name (_CRS, ResourceTemplate () { IO (Decode16, 0x02F8, 0x02F8, 0x00, 0x08) IRQNoFlags () {3} }) } }
			"COM2",
			Scope(`\_SB_`, Device("COM2",
				Name("_HID", EISAID("PNP0501")),
				Name("_UID", Int(2)),
				Name("_CRS", ResourceTemplate(IO(0x2f8, 0x2f8, 0, 8), IRQNoFlags(3))))),
			[]byte{
				0x10, 0x34, '\\', '_', 'S', 'B', '_',
				0x5b, 0x82, 0x2c, 'C', 'O', 'M', '2',
				0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01,
				0x08, '_', 'U', 'I', 'D', 0x0a, 0x02,
				0x08, '_', 'C', 'R', 'S', 0x11, 0x10, 0x0a, 0x0d,
				0x47, 0x01, 0xf8, 0x02, 0xf8, 0x02, 0x00, 0x08,
				0x22, 0x08, 0x00,
				0x79, 0x00,
			},
		},
		{
			// Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, 0xD0000000, 0x00000200)
			//   Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, ) {0x00000005} })
			"virtio-mmio _CRS",
			Name("_CRS", ResourceTemplate(Memory32Fixed(true, 0xd000_0000, 0x200), Interrupt(LevelTriggered, ActiveHigh, 5))),
			[]byte{
				0x08, '_', 'C', 'R', 'S', 0x11, 0x1a, 0x0a, 0x17,
				0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x02, 0x00, 0x00,
				0x89, 0x06, 0x00, 0x01, 0x01, 0x05, 0x00, 0x00, 0x00,
				0x79, 0x00,
			},
		},
		{"edge, active-low interrupt", Interrupt(EdgeTriggered, ActiveLow, 0x10), []byte{0x89, 0x06, 0x00, 0x07, 0x01, 0x10, 0, 0, 0}},
		{"string", Name("_HID", String("LNRO0005")), []byte{0x08, '_', 'H', 'I', 'D', 0x0d, 'L', 'N', 'R', 'O', '0', '0', '0', '5', 0}},
		{"EISA ID PNP0A03", EISAID("PNP0A03"), []byte{0x0c, 0x41, 0xd0, 0x0a, 0x03}},
		{"dual name", NamePath(`\_SB_.COM1`), []byte{'\\', 0x2e, '_', 'S', 'B', '_', 'C', 'O', 'M', '1'}},
		{"multi name", NamePath(`\_SB_.PCI0.S08_`), []byte{'\\', 0x2f, 3, '_', 'S', 'B', '_', 'P', 'C', 'I', '0', 'S', '0', '8', '_'}},
		{"parent prefix", NamePath("^^FOO_"), []byte{'^', '^', 'F', 'O', 'O', '_'}},
		{"root only", NamePath(`\`), []byte{'\\', 0}},
		{"ints", concatAll(Int(0), Int(1), Int(2), Int(0x1234), Int(0x12345678), Int(0x1_0000_0000)),
			[]byte{0x00, 0x01, 0x0a, 0x02, 0x0b, 0x34, 0x12, 0x0c, 0x78, 0x56, 0x34, 0x12, 0x0e, 0, 0, 0, 0, 1, 0, 0, 0}},
		{
			// Method (_STA, 0, NotSerialized) { Return (0x0F) }
			"method", Method("_STA", Return(Int(0xf))),
			[]byte{0x14, 0x09, '_', 'S', 'T', 'A', 0x00, 0xa4, 0x0a, 0x0f},
		},
	}
	for _, c := range cases {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("%s:\n got % x\nwant % x", c.name, c.got, c.want)
		}
	}
}

func concatAll(b ...[]byte) []byte { return concat(b) }

func TestLongPackages(t *testing.T) {
	b := Buffer(make([]byte, 100))
	// BufferOp, PkgLength (2 bytes for 100+2+2), ByteConst 100, data.
	if b[0] != bufferOp || len(b) != 1+2+2+100 || b[3] != bytePrefix || b[4] != 100 {
		t.Fatalf("Buffer(100 bytes) = % x...", b[:8])
	}
	if got := int(b[1]&0xf) | int(b[2])<<4; got != len(b)-1 {
		t.Fatalf("PkgLength says %d, the package is %d bytes", got, len(b)-1)
	}
}

func TestBadNamesPanic(t *testing.T) {
	for _, n := range []string{"COM", "COM12", "com1", "1COM", `\_SB_.X`, "A-B_", "COM1."} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NamePath(%q) did not panic", n)
				}
			}()
			NamePath(n)
		}()
	}
}
