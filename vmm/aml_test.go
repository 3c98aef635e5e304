package vmm

import "testing"

// TestCOM1AMLLengths checks the PkgLength fields against the bytes they
// cover: a wrong one makes the guest's AML interpreter reject the DSDT.
func TestCOM1AMLLengths(t *testing.T) {
	if got := int(com1AML[1]); got != len(com1AML)-1 {
		t.Errorf("Scope PkgLength %d, want %d", got, len(com1AML)-1)
	}
	if got := int(com1AML[9]); got != len(com1AML)-9 {
		t.Errorf("Device PkgLength %d, want %d", got, len(com1AML)-9)
	}
	crs := 7 + 7 + 10 + 6 + 5 // offset of BufferOp: scope, device, _HID, _UID and _CRS headers
	if com1AML[crs] != 0x11 || int(com1AML[crs+1]) != len(com1AML)-crs-1 || int(com1AML[crs+3]) != len(com1AML)-crs-4 {
		t.Errorf("_CRS buffer lengths wrong: % x", com1AML[crs:crs+4])
	}
}
