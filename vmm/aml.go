package vmm

// com1AML describes the 16550A at 0x3f8/IRQ 4 in the DSDT (ACPI 6.4
// §20.2 encodings, §6.4 resource descriptors). With hardware-reduced ACPI
// Linux has no legacy PIC and maps ISA IRQs only for devices ACPI names:
// without this the UART's interrupt never reaches the guest driver.
//
//	Scope (\_SB) { Device (COM1) {
//	    Name (_HID, EisaId ("PNP0501"))
//	    Name (_UID, One)
//	    Name (_CRS, ResourceTemplate () {
//	        IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
//	        IRQNoFlags () {4}
//	    })
//	} }
var com1AML = []byte{
	0x10, 0x33, '\\', '_', 'S', 'B', '_', // ScopeOp, PkgLength 51, \_SB_
	0x5b, 0x82, 0x2b, 'C', 'O', 'M', '1', // DeviceOp, PkgLength 43, COM1
	0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01, // _HID = EISAID PNP0501
	0x08, '_', 'U', 'I', 'D', 0x01, // _UID = One
	0x08, '_', 'C', 'R', 'S', 0x11, 0x10, 0x0a, 0x0d, // _CRS = Buffer(13)
	0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, // IO: decode16, 0x3f8..0x3f8, align 0, 8 ports
	0x22, 0x10, 0x00, // IRQNoFlags: IRQ 4
	0x79, 0x00, // End tag
}
