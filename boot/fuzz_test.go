package boot

import (
	"bytes"
	"testing"
)

// FuzzDetectAndLoad feeds arbitrary kernel files to ParseKernel and Load: they
// may only return errors, never panic or write outside guest RAM.
func FuzzDetectAndLoad(f *testing.F) {
	// Small seeds keep the fuzzer's minimisation quick.
	b := defaultBz()
	b.sects, b.payload = 1, 64
	f.Add(b.build())
	b.relocatable = false
	f.Add(b.build())
	f.Add(synthELF(elfSpec{segs: []elfSeg{{0x1000000, []byte{0xf4}, 0x40}}}))
	f.Add([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	f.Add([]byte("MZ garbage"))
	m := newMem(32 << 20)
	f.Fuzz(func(t *testing.T, k []byte) {
		p, derr := detect(k)
		e, lerr := ld(tp{Kernel: k, KernelPath: "fuzz", Initrd: []byte("initrd"), Cmdline: "x", CPUs: 2, Mem: m, ACPI: true})
		if lerr == nil && (derr != nil || e.Protocol != p) {
			t.Fatalf("Load accepted what ParseKernel refused (%v) or disagrees on the protocol", derr)
		}
		if lerr == nil && (e.KernelEnd > 32<<20 || e.Initrd[0] < e.KernelEnd) {
			t.Fatalf("entry outside RAM or initrd over the kernel: %+v", e)
		}
	})
}

// FuzzELF mutates valid PVH ELF files (the ELF and note parsers).
func FuzzELF(f *testing.F) {
	seg := []elfSeg{{0x1000000, []byte{0xf4}, 0x40}}
	f.Add(synthELF(elfSpec{segs: seg}))
	f.Add(synthELF(elfSpec{segs: seg, desc8: true}))
	f.Add(synthELF(elfSpec{segs: seg, noNote: true}))
	f.Add(synthELF(elfSpec{segs: []elfSeg{{0x1000000, make([]byte, 64), 0x100}, {0x1100000, make([]byte, 8), 0x40}}}))
	m := newMem(32 << 20)
	f.Fuzz(func(t *testing.T, k []byte) {
		if _, err := parseELF(bytes.NewReader(k), int64(len(k))); err != nil {
			return
		}
		e, err := ld(tp{Kernel: k, CPUs: 1, Mem: m})
		if err == nil && e.Protocol != PVH {
			t.Fatalf("ELF loaded as %v", e.Protocol)
		}
	})
}

// FuzzPVHNote walks arbitrary note sections.
func FuzzPVHNote(f *testing.F) {
	f.Add([]byte{4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, 'X', 'e', 'n', 0, 0, 0x10, 0, 1})
	f.Add(elfNote("Xen", 18, make([]byte, 8)))
	f.Fuzz(func(t *testing.T, b []byte) { _, _, _ = findPVHNote(b) })
}
