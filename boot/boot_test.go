package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ember-vmm/ember/vmm/memory"
)

// synthBzImage builds a minimal valid bzImage: setup sectors plus a
// protected-mode part of n bytes.
func synthBzImage(n int) []byte {
	sects := 4
	k := make([]byte, (sects+1)*512+n)
	k[offSetupSects] = byte(sects)
	binary.LittleEndian.PutUint16(k[offBootFlag:], 0xaa55)
	k[offJump+1] = byte(offInitSize + 4 - offHeader)
	binary.LittleEndian.PutUint32(k[offHeader:], magicHdrS)
	binary.LittleEndian.PutUint16(k[offVersion:], 0x020f)
	k[offLoadflags] = loadedHigh
	binary.LittleEndian.PutUint32(k[offInitrdAddrMax:], 0x7fffffff)
	binary.LittleEndian.PutUint16(k[offXLoadflags:], xlfKernel64)
	binary.LittleEndian.PutUint32(k[offCmdlineSize:], 2047)
	binary.LittleEndian.PutUint32(k[offPayloadOffset:], 0)
	binary.LittleEndian.PutUint32(k[offPayloadLength:], uint32(n))
	binary.LittleEndian.PutUint32(k[offInitSize:], 4<<20)
	for i := (sects + 1) * 512; i < len(k); i++ {
		k[i] = byte(i)
	}
	return k
}

func TestOffsetsPinnedToSpec(t *testing.T) {
	// arch/x86/include/uapi/asm/bootparam.h and boot.rst.
	want := map[string]int{"acpi_rsdp_addr": 0x070, "ext_ramdisk_image": 0x0c0, "ext_cmd_line_ptr": 0x0c8,
		"e820_entries": 0x1e8, "hdr": 0x1f1, "e820_table": 0x2d0}
	for k, v := range want {
		if zeroPageOffsets[k] != v {
			t.Errorf("%s at %#x, want %#x", k, zeroPageOffsets[k], v)
		}
	}
	for name, c := range map[string][2]int{
		"ramdisk_image": {offRamdiskImage, 0x218}, "cmd_line_ptr": {offCmdLinePtr, 0x228},
		"initrd_addr_max": {offInitrdAddrMax, 0x22c}, "xloadflags": {offXLoadflags, 0x236},
		"cmdline_size": {offCmdlineSize, 0x238}, "payload_offset": {offPayloadOffset, 0x248},
		"init_size": {offInitSize, 0x260}, "hvm_start_info.memmap_paddr": {siMemmapPaddr, 40},
		"hvm_start_info.rsdp_paddr": {siRSDPPaddr, 32}, "hvm_start_info size": {startInfoSize, 56},
	} {
		if c[0] != c[1] {
			t.Errorf("%s at %#x, want %#x", name, c[0], c[1])
		}
	}
}

func TestLoadBzImage(t *testing.T) {
	m := memory.NewFake(64 << 20)
	k := synthBzImage(8192)
	initrd := bytes.Repeat([]byte{0xab}, 10000)
	e, err := Load(Params{Kernel: k, Initrd: initrd, Cmdline: "console=ttyS0", CPUs: 2, Mem: m})
	if err != nil {
		t.Fatal(err)
	}
	if e.Protocol != Linux64 || e.BSP.RIP != 0x100200 || e.BSP.RSI != AddrZeroPage {
		t.Fatalf("entry %+v", e.BSP)
	}
	got := make([]byte, 8192)
	m.ReadAt(got, kernelLoad)
	if !bytes.Equal(got, k[5*512:]) {
		t.Fatal("protected-mode kernel not at 1 MiB")
	}
	zp := make([]byte, zpSize)
	m.ReadAt(zp, AddrZeroPage)
	rd := uint64(binary.LittleEndian.Uint32(zp[offRamdiskImage:]))
	if rd%4096 != 0 || rd < kernelLoad+4<<20 || rd+10000 > 64<<20 || binary.LittleEndian.Uint32(zp[offRamdiskSize:]) != 10000 {
		t.Fatalf("initrd at %#x", rd)
	}
	chk := make([]byte, 10000)
	m.ReadAt(chk, int64(rd))
	if !bytes.Equal(chk, initrd) {
		t.Fatal("initrd content")
	}
	if zp[offTypeOfLoader] != 0xff || binary.LittleEndian.Uint32(zp[offCmdLinePtr:]) != AddrCmdline {
		t.Fatal("loader type / cmdline pointer")
	}
	cl := make([]byte, 14)
	m.ReadAt(cl, AddrCmdline)
	if string(cl) != "console=ttyS0\x00" {
		t.Fatalf("cmdline %q", cl)
	}
	if zp[zpE820Entries] != 3 {
		t.Fatalf("e820 entries %d", zp[zpE820Entries])
	}
	last := zpE820Table + 2*20
	if binary.LittleEndian.Uint64(zp[last:]) != HighMemStart || binary.LittleEndian.Uint64(zp[last+8:]) != 63<<20 {
		t.Fatal("e820 high entry")
	}
	// MP table: floating pointer and configuration table checksums.
	f := make([]byte, 16)
	m.ReadAt(f, AddrMP)
	if string(f[:4]) != "_MP_" || checksum(f) != 0 {
		t.Fatalf("MP floating pointer %x", f)
	}
	hdr := make([]byte, 44)
	m.ReadAt(hdr, AddrMP+16)
	tbl := make([]byte, binary.LittleEndian.Uint16(hdr[4:]))
	m.ReadAt(tbl, AddrMP+16)
	if string(tbl[:4]) != "PCMP" || checksum(tbl) != 0 || tbl[44] != 0 || tbl[44+20] != 0 || tbl[44+20+3] != 1 {
		t.Fatalf("MP table bad: %x", tbl[:64])
	}
}

func TestHighMemoryInE820(t *testing.T) {
	m := memory.NewFake(memory.HoleStart + 256<<20)
	if _, err := Load(Params{Kernel: synthBzImage(4096), CPUs: 1, Mem: m}); err != nil {
		t.Fatal(err)
	}
	zp := make([]byte, zpSize)
	m.ReadAt(zp, AddrZeroPage)
	if zp[zpE820Entries] != 4 {
		t.Fatalf("e820 entries %d, want 4", zp[zpE820Entries])
	}
	o := zpE820Table + 3*20
	if binary.LittleEndian.Uint64(zp[o:]) != memory.HighStart || binary.LittleEndian.Uint64(zp[o+8:]) != 256<<20 {
		t.Fatal("RAM above the hole missing from e820")
	}
}

func TestBadKernels(t *testing.T) {
	good := synthBzImage(8192)
	old := bytes.Clone(good)
	binary.LittleEndian.PutUint16(old[offVersion:], 0x0205)
	no64 := bytes.Clone(good)
	binary.LittleEndian.PutUint16(no64[offXLoadflags:], 0)
	cases := []struct {
		name string
		k    []byte
		want error
	}{
		{"empty", nil, ErrNotKernel},
		{"random", bytes.Repeat([]byte{0x5a, 0x13}, 5000), ErrNotKernel},
		{"truncated setup", good[:0x300], ErrTruncated},
		{"truncated payload", good[:len(good)-100], ErrTruncated},
		{"old protocol", old, ErrUnsupported},
		{"32-bit only", no64, ErrUnsupported},
		{"elf garbage", append([]byte{0x7f, 'E', 'L', 'F'}, make([]byte, 100)...), ErrUnsupported},
	}
	for _, c := range cases {
		_, err := Detect(c.k)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Detect = %v, want %v", c.name, err, c.want)
		}
		if _, err := Load(Params{Kernel: c.k, CPUs: 1, Mem: memory.NewFake(32 << 20)}); err == nil {
			t.Errorf("%s: Load succeeded", c.name)
		}
	}
	m := memory.NewFake(32 << 20)
	if _, err := Load(Params{Kernel: good, CPUs: 1, Mem: m, Initrd: make([]byte, 40<<20)}); !errors.Is(err, ErrNoRoom) {
		t.Errorf("oversized initrd: %v", err)
	}
	if _, err := Load(Params{Kernel: good, CPUs: 1, Mem: m, Cmdline: string(bytes.Repeat([]byte("x"), 3000))}); err == nil {
		t.Error("over-long command line accepted")
	}
}

func TestPVHNote(t *testing.T) {
	note := func(name string, typ uint32, desc []byte) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(len(name)+1))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(desc)))
		b = binary.LittleEndian.AppendUint32(b, typ)
		n := append([]byte(name), 0)
		for len(n)%4 != 0 {
			n = append(n, 0)
		}
		return append(append(b, n...), desc...)
	}
	b := append(note("GNU", 3, make([]byte, 20)), note("Xen", 18, []byte{0x00, 0x10, 0x00, 0x01})...)
	if e, ok := findPVHNote(b); !ok || e != 0x01001000 {
		t.Fatalf("entry %#x %v", e, ok)
	}
	if _, ok := findPVHNote(b[:len(b)-3]); ok {
		t.Fatal("truncated note accepted")
	}
}

// TestRealKernels loads Debian's kernels when the cache has them.
func TestRealKernels(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(os.Getenv("HOME"), ".cache/ember/kernels/*/vmlinu*"))
	if p := os.Getenv("EMBER_TEST_KERNEL"); p != "" {
		paths = append(paths, p)
	}
	if len(paths) == 0 {
		t.Skip("SKIP: no cached kernels (run `make images`); synthetic kernels cover the loader")
	}
	for _, p := range paths {
		k, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m := memory.NewFake(512 << 20)
		e, err := Load(Params{Kernel: k, KernelPath: p, CPUs: 2, Mem: m, Initrd: []byte("07070100"), Cmdline: "console=ttyS0"})
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		t.Logf("%s: %s entry %#x end %#x", filepath.Base(p), e.Protocol, e.BSP.RIP, e.KernelEnd)
	}
}

func FuzzLoad(f *testing.F) {
	f.Add(synthBzImage(600))
	f.Add([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	f.Add([]byte("MZ garbage"))
	m := memory.NewFake(32 << 20)
	f.Fuzz(func(t *testing.T, k []byte) {
		_, _ = Detect(k)
		_, _ = Load(Params{Kernel: k, CPUs: 1, Mem: m})
	})
}

func FuzzPVHNote(f *testing.F) {
	f.Add([]byte{4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, 'X', 'e', 'n', 0, 0, 0x10, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) { findPVHNote(b) })
}
