package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ember-vmm/ember/boot/elf64/elf64test"
)

// bz describes a synthetic bzImage.
type bz struct {
	version     uint16
	sects       byte
	payload     int // bytes of protected-mode code
	relocatable bool
	align       uint32
	pref        uint64
	initSize    uint32
	cmdlineSize uint32
	initrdMax   uint32
	xload       uint16
	loadflags   byte
}

func defaultBz() bz {
	return bz{version: 0x020f, sects: 4, payload: 8192, relocatable: true, align: 0x200000,
		pref: 0x1000000, initSize: 4 << 20, cmdlineSize: 2047, initrdMax: 0x7fffffff,
		xload: xlfKernel64, loadflags: loadedHigh}
}

// build returns a minimal valid bzImage: setup sectors plus the
// protected-mode part, filled with a recognisable pattern.
func (b bz) build() []byte {
	sects := int(b.sects)
	if sects == 0 {
		sects = 4
	}
	k := make([]byte, (sects+1)*512+b.payload)
	le := binary.LittleEndian
	k[offSetupSects] = b.sects
	le.PutUint32(k[offSyssize:], uint32(b.payload/16))
	le.PutUint16(k[offBootFlag:], bootFlag)
	k[offJump] = 0xeb
	k[offJump+1] = byte(0x26c - offHeader) // header through kernel_info_offset
	le.PutUint32(k[offHeader:], magicHdrS)
	le.PutUint16(k[offVersion:], b.version)
	k[offLoadflags] = b.loadflags
	le.PutUint32(k[offCode32Start:], 0x100000)
	le.PutUint32(k[offInitrdAddrMax:], b.initrdMax)
	le.PutUint32(k[offKernelAlign:], b.align)
	if b.relocatable {
		k[offRelocatable] = 1
	}
	le.PutUint16(k[offXLoadflags:], b.xload)
	le.PutUint32(k[offCmdlineSize:], b.cmdlineSize)
	le.PutUint32(k[offPayloadOffset:], 0)
	le.PutUint32(k[offPayloadLength:], uint32(b.payload))
	le.PutUint64(k[offSetupData:], 0xdeadbeef) // must not reach the guest
	le.PutUint64(k[offPrefAddress:], b.pref)
	le.PutUint32(k[offInitSize:], b.initSize)
	for i := (sects + 1) * 512; i < len(k); i++ {
		k[i] = byte(i * 7)
	}
	return k
}

func synthBzImage(n int) []byte {
	b := defaultBz()
	b.payload = n
	return b.build()
}

func TestOffsetsPinnedToSpec(t *testing.T) {
	// boot.rst ("The Real-Mode Kernel Header"), zero-page.rst, bootparam.h,
	// and Xen's start_info.h.
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"setup_sects", offSetupSects, 0x1f1}, {"syssize", offSyssize, 0x1f4}, {"vid_mode", offVidMode, 0x1fa},
		{"boot_flag", offBootFlag, 0x1fe}, {"jump", offJump, 0x200}, {"header", offHeader, 0x202},
		{"version", offVersion, 0x206}, {"type_of_loader", offTypeOfLoader, 0x210},
		{"loadflags", offLoadflags, 0x211}, {"code32_start", offCode32Start, 0x214},
		{"ramdisk_image", offRamdiskImage, 0x218}, {"ramdisk_size", offRamdiskSize, 0x21c},
		{"cmd_line_ptr", offCmdLinePtr, 0x228}, {"initrd_addr_max", offInitrdAddrMax, 0x22c},
		{"kernel_alignment", offKernelAlign, 0x230}, {"relocatable_kernel", offRelocatable, 0x234},
		{"xloadflags", offXLoadflags, 0x236}, {"cmdline_size", offCmdlineSize, 0x238},
		{"payload_offset", offPayloadOffset, 0x248}, {"payload_length", offPayloadLength, 0x24c},
		{"setup_data", offSetupData, 0x250}, {"pref_address", offPrefAddress, 0x258},
		{"init_size", offInitSize, 0x260},
		{"boot_params.acpi_rsdp_addr", zpACPIRSDP, 0x070}, {"boot_params.ext_ramdisk_image", zpExtRamdisk, 0x0c0},
		{"boot_params.ext_ramdisk_size", zpExtRamdiskSz, 0x0c4}, {"boot_params.ext_cmd_line_ptr", zpExtCmdLinePtr, 0x0c8},
		{"boot_params.e820_entries", zpE820Entries, 0x1e8}, {"boot_params.e820_table", zpE820Table, 0x2d0},
		{"boot_entry size", zpE820EntrySize, 20}, {"E820_MAX_ENTRIES_ZEROPAGE", e820Max, 128},
		{"boot_params size", zpSize, 4096},
		{"hvm_start_info.magic", siMagic, 0}, {"hvm_start_info.version", siVersion, 4},
		{"hvm_start_info.flags", siFlags, 8}, {"hvm_start_info.nr_modules", siNrModules, 12},
		{"hvm_start_info.modlist_paddr", siModlistPaddr, 16}, {"hvm_start_info.cmdline_paddr", siCmdlinePaddr, 24},
		{"hvm_start_info.rsdp_paddr", siRSDPPaddr, 32}, {"hvm_start_info.memmap_paddr", siMemmapPaddr, 40},
		{"hvm_start_info.memmap_entries", siMemmapEntries, 48}, {"sizeof(hvm_start_info)", startInfoSize, 56},
		{"hvm_modlist_entry.size", modSize, 8}, {"hvm_modlist_entry.cmdline_paddr", modCmdline, 16},
		{"sizeof(hvm_modlist_entry)", modlistEntrySize, 32},
		{"hvm_memmap_table_entry.size", memmapSize, 8}, {"hvm_memmap_table_entry.type", memmapType, 16},
		{"sizeof(hvm_memmap_table_entry)", memmapEntrySize, 24},
		{"XEN_ELFNOTE_PHYS32_ENTRY", xenElfnotePhys32Entry, 18}, {"XEN_HVM_START_MAGIC_VALUE", startInfoMagic, 0x336ec578},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, spec says %#x", c.name, c.got, c.want)
		}
	}
}

// TestLayoutDisjoint checks the fixed low-memory structures at their
// largest sizes neither overlap nor leave the area e820 gives them.
func TestLayoutDisjoint(t *testing.T) {
	type area struct {
		name       string
		start, end uint64
	}
	mpMax := uint64(mpHeaderSize + MaxCPUs*mpCPUSize + (2+isaIRQs+2)*mpEntrySize)
	areas := []area{
		{"GDT", AddrGDT, AddrGDT + 6*8},
		{"IDT", AddrIDT, AddrIDT + 8},
		{"TSS", AddrTSS, AddrTSS + tssSize},
		{"start_info", AddrStartInfo, AddrStartInfo + startInfoSize},
		{"modlist", addrModlist, addrModlist + modlistEntrySize},
		{"memmap", addrMemmap, addrMemmap + e820Max*memmapEntrySize},
		{"zero page", AddrZeroPage, AddrZeroPage + zpSize},
		{"stack", AddrStack - 0x800, AddrStack},
		{"page tables", AddrPML4, AddrPD + numPD*4096},
		{"cmdline", AddrCmdline, AddrCmdline + MaxCmdline},
		{"MP floating pointer", AddrMP, AddrMP + mpFloatSize},
		{"ACPI", AddrACPI, AddrMPConfig},
		{"MP config", AddrMPConfig, AddrMPConfig + mpMax},
	}
	for i, a := range areas {
		if a.end > HighMemStart {
			t.Errorf("%s ends at %#x, above 1 MiB", a.name, a.end)
		}
		if a.start < EBDAStart && a.end > EBDAStart {
			t.Errorf("%s straddles the EBDA boundary", a.name)
		}
		for _, b := range areas[i+1:] {
			if a.start < b.end && b.start < a.end {
				t.Errorf("%s [%#x,%#x) overlaps %s [%#x,%#x)", a.name, a.start, a.end, b.name, b.start, b.end)
			}
		}
	}
	if addrModlist < AddrStartInfo+startInfoSize || AddrIDT < AddrGDT+6*8 || AddrTSS < AddrIDT+8 {
		t.Error("adjacent structures overlap")
	}
}

// decodeDescriptor is the inverse of Segment.descriptor, written out
// independently from the SDM's figure 3-8.
func decodeDescriptor(d uint64, sel uint16) Segment {
	s := Segment{
		Base:     d>>16&0xffffff | (d>>56&0xff)<<24,
		Limit:    uint32(d&0xffff | (d>>48&0xf)<<16),
		Selector: sel,
		Type:     uint8(d >> 40 & 0xf), S: uint8(d >> 44 & 1), DPL: uint8(d >> 45 & 3), Present: uint8(d >> 47 & 1),
		AVL: uint8(d >> 52 & 1), L: uint8(d >> 53 & 1), DB: uint8(d >> 54 & 1), G: uint8(d >> 55 & 1),
	}
	if s.G == 1 {
		s.Limit = s.Limit<<12 | 0xfff
	}
	return s
}

// checkGDT checks that the in-memory GDT describes the loaded segments.
func checkGDT(t *testing.T, m *fakeMem, st CPUState) {
	t.Helper()
	gdt := read(t, m, st.GDT.Base, int(st.GDT.Limit)+1)
	for _, s := range []Segment{st.CS, st.DS, st.TR} {
		if int(s.Selector)+8 > len(gdt) {
			t.Fatalf("selector %#x outside the GDT (limit %#x)", s.Selector, st.GDT.Limit)
		}
		got := decodeDescriptor(binary.LittleEndian.Uint64(gdt[s.Selector:]), s.Selector)
		if got != s {
			t.Errorf("GDT entry %#x = %+v, loaded %+v", s.Selector, got, s)
		}
	}
	if st.TR.S != 0 || st.TR.Type != typeTSSBusy || st.TR.Present != 1 || st.TR.Limit < tssSize-1 {
		t.Errorf("TR %+v is not a usable busy TSS", st.TR)
	}
	if binary.LittleEndian.Uint64(gdt) != 0 {
		t.Error("GDT entry 0 is not null")
	}
}

// translate walks the 4-level page tables the loader wrote.
func translate(t *testing.T, m *fakeMem, cr3, va uint64) uint64 {
	t.Helper()
	e := binary.LittleEndian.Uint64(read(t, m, cr3+(va>>39&511)*8, 8))
	if e&ptePresent == 0 {
		t.Fatalf("PML4 entry for %#x not present", va)
	}
	e = binary.LittleEndian.Uint64(read(t, m, e&^0xfff+(va>>30&511)*8, 8))
	if e&ptePresent == 0 {
		t.Fatalf("PDPT entry for %#x not present", va)
	}
	e = binary.LittleEndian.Uint64(read(t, m, e&^0xfff+(va>>21&511)*8, 8))
	if e&ptePresent == 0 || e&ptePS == 0 || e&pteWrite == 0 {
		t.Fatalf("PD entry for %#x = %#x, want a present writable 2 MiB page", va, e)
	}
	return e&^0x1fffff | va&0x1fffff
}

func zeroPage(t *testing.T, m *fakeMem) []byte { return read(t, m, AddrZeroPage, zpSize) }

func TestLoadBzImage(t *testing.T) {
	m := newMem(64 << 20)
	k := synthBzImage(8192)
	initrd := bytes.Repeat([]byte{0xab}, 10000)
	e, err := ld(tp{Kernel: k, KernelPath: "bz", Initrd: initrd, Cmdline: "console=ttyS0", CPUs: 2, Mem: m})
	if err != nil {
		t.Fatal(err)
	}
	const load = 0x1000000 // pref_address, 2 MiB aligned
	if e.Protocol != Linux64 || e.BSP.RIP != load+0x200 || e.BSP.RSI != AddrZeroPage || e.KernelEnd != load+4<<20 {
		t.Fatalf("entry %+v", e)
	}
	if !bytes.Equal(read(t, m, load, 8192), k[5*512:]) {
		t.Fatal("protected-mode kernel not at pref_address")
	}
	zp := zeroPage(t, m)
	le := binary.LittleEndian
	rd := uint64(le.Uint32(zp[offRamdiskImage:]))
	if rd%4096 != 0 || rd < e.KernelEnd || rd+10000 > 64<<20 || rd+10000+4096 <= 64<<20 ||
		le.Uint32(zp[offRamdiskSize:]) != 10000 || e.Initrd != [2]uint64{rd, 10000} {
		t.Fatalf("initrd at %#x (entry says %v)", rd, e.Initrd)
	}
	if !bytes.Equal(read(t, m, rd, 10000), initrd) {
		t.Fatal("initrd content")
	}
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"type_of_loader", uint64(zp[offTypeOfLoader]), 0xff},
		{"cmd_line_ptr", uint64(le.Uint32(zp[offCmdLinePtr:])), AddrCmdline},
		{"vid_mode", uint64(le.Uint16(zp[offVidMode:])), 0xffff},
		{"code32_start", uint64(le.Uint32(zp[offCode32Start:])), load},
		{"version copied", uint64(le.Uint16(zp[offVersion:])), 0x020f},
		{"init_size copied", uint64(le.Uint32(zp[offInitSize:])), 4 << 20},
		{"setup_data cleared", le.Uint64(zp[offSetupData:]), 0},
		{"acpi_rsdp_addr without ACPI", le.Uint64(zp[zpACPIRSDP:]), 0},
		{"ext_ramdisk_image", uint64(le.Uint32(zp[zpExtRamdisk:])), 0},
		{"sentinel", uint64(zp[0x1ef]), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if cl := read(t, m, AddrCmdline, 14); string(cl) != "console=ttyS0\x00" {
		t.Fatalf("cmdline %q", cl)
	}
	wantE820 := []e820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x100000, 63 << 20, 1}}
	checkE820(t, zp, wantE820)

	st := e.BSP
	if st.CR0&(cr0PE|cr0PG) != cr0PE|cr0PG || st.CR4&cr4PAE == 0 || st.EFER&(eferLME|eferLMA) != eferLME|eferLMA ||
		st.RFLAGS != 2 || st.CS.L != 1 || st.CS.DB != 0 || st.CS.Selector != 0x10 || st.DS.Selector != 0x18 ||
		st.CR3 != AddrPML4 {
		t.Fatalf("CPU state %+v", st)
	}
	checkGDT(t, m, st)
	for _, va := range []uint64{st.RIP, AddrZeroPage, AddrCmdline, e.KernelEnd - 1, rd, 0xbfffffff, 0xfee00000} {
		if pa := translate(t, m, st.CR3, va); pa != va {
			t.Errorf("page tables map %#x to %#x", va, pa)
		}
	}
}

func checkE820(t *testing.T, zp []byte, want []e820Entry) {
	t.Helper()
	if int(zp[zpE820Entries]) != len(want) {
		t.Fatalf("e820 has %d entries, want %d", zp[zpE820Entries], len(want))
	}
	for i, w := range want {
		o := zpE820Table + i*zpE820EntrySize
		got := e820Entry{binary.LittleEndian.Uint64(zp[o:]), binary.LittleEndian.Uint64(zp[o+8:]), binary.LittleEndian.Uint32(zp[o+16:])}
		if got != w {
			t.Errorf("e820[%d] = %+v, want %+v", i, got, w)
		}
	}
}

func TestPlacement(t *testing.T) {
	cases := []struct {
		name      string
		mod       func(*bz)
		load, end uint64
	}{
		{"relocatable at pref_address", func(b *bz) {}, 0x1000000, 0x1400000},
		{"pref_address rounded up to kernel_alignment", func(b *bz) { b.pref = 0x1100000 }, 0x1200000, 0x1600000},
		{"no pref_address: from 1 MiB aligned", func(b *bz) { b.pref = 0 }, 0x200000, 0x600000},
		{"init_size below file size", func(b *bz) { b.initSize = 0; b.payload = 0x300000 }, 0x1000000, 0x1300000},
		{"not relocatable: at 1 MiB, runs at pref", func(b *bz) { b.relocatable = false; b.align = 3 }, 0x100000, 0x1400000},
	}
	for _, c := range cases {
		b := defaultBz()
		c.mod(&b)
		m := newMem(64 << 20)
		k := b.build()
		e, err := ld(tp{Kernel: k, CPUs: 1, Mem: m, Initrd: []byte("x")})
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if e.BSP.RIP != c.load+0x200 || e.KernelEnd != c.end || e.Initrd[0] < c.end {
			t.Errorf("%s: entry %#x end %#x initrd %#x, want load %#x end %#x", c.name, e.BSP.RIP, e.KernelEnd, e.Initrd[0], c.load, c.end)
		}
		if got := read(t, m, c.load, 64); !bytes.Equal(got, k[5*512:5*512+64]) {
			t.Errorf("%s: kernel not at %#x", c.name, c.load)
		}
	}
}

func TestInitrdBelowAddrMax(t *testing.T) {
	b := defaultBz()
	b.initrdMax = 0x2000000 - 1
	m := newMem(64 << 20)
	e, err := ld(tp{Kernel: b.build(), CPUs: 1, Mem: m, Initrd: make([]byte, 5000)})
	if err != nil {
		t.Fatal(err)
	}
	if e.Initrd[0]+5000 > 0x2000000 || e.Initrd[0] != 0x2000000-0x2000 {
		t.Fatalf("initrd at %#x, want 0x1ffe000 (highest page below initrd_addr_max)", e.Initrd[0])
	}
}

func TestHighMemoryInE820(t *testing.T) {
	m := newMem(testHoleStart + 256<<20)
	if _, err := ld(tp{Kernel: synthBzImage(4096), CPUs: 1, Mem: m}); err != nil {
		t.Fatal(err)
	}
	checkE820(t, zeroPage(t, m), []e820Entry{
		{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x100000, testHoleStart - 0x100000, 1}, {testHighStart, 256 << 20, 1},
	})
}

func TestBadKernels(t *testing.T) {
	mod := func(f func(*bz)) []byte { b := defaultBz(); f(&b); return b.build() }
	set := func(k []byte, off int, v ...byte) []byte { k = bytes.Clone(k); copy(k[off:], v); return k }
	good := synthBzImage(8192)
	cases := []struct {
		name string
		k    []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrNotKernel, "not a Linux kernel"},
		{"random", bytes.Repeat([]byte{0x5a, 0x13}, 5000), ErrNotKernel, "no bzImage 'HdrS' magic and no ELF header"},
		{"short header", good[:0x230], ErrTruncated, "shorter than a bzImage setup header"},
		{"truncated setup", good[:0x900], ErrTruncated, "setup header says 4 setup sectors but file has 2304 bytes"},
		{"truncated payload", good[:len(good)-100], ErrTruncated, "truncated"},
		{"bad boot flag", set(good, offBootFlag, 0, 0), ErrUnsupported, "boot_flag"},
		{"old protocol", mod(func(b *bz) { b.version = 0x0205 }), ErrUnsupported, "boot protocol 2.05 too old (need >= 2.06 with 64-bit entry XLF_KERNEL_64)"},
		{"2.10 without xloadflags", mod(func(b *bz) { b.version = 0x020a }), ErrUnsupported, "no 64-bit entry point"},
		{"32-bit only", mod(func(b *bz) { b.xload = 0 }), ErrUnsupported, "XLF_KERNEL_64"},
		{"zImage", mod(func(b *bz) { b.loadflags = 0 }), ErrUnsupported, "zImage"},
		{"bad alignment", mod(func(b *bz) { b.align = 0x300000 }), ErrUnsupported, "not a power of two"},
		{"elf garbage", append([]byte{0x7f, 'E', 'L', 'F'}, make([]byte, 100)...), ErrUnsupported, "malformed ELF"},
		{"elf without PVH note", synthELF(elfSpec{noNote: true}), ErrNoPVHEntry, "no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"},
		{"elf32", set(synthELF(elfSpec{}), 4, 1), ErrUnsupported, "ELF"},
	}
	for _, c := range cases {
		_, err := detect(c.k)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: ParseKernel = %v, want %v containing %q", c.name, err, c.want, c.msg)
		}
		_, err = ld(tp{Kernel: c.k, KernelPath: "/k/vmlinuz", CPUs: 1, Mem: newMem(32 << 20)})
		if !errors.Is(err, c.want) || !strings.HasPrefix(err.Error(), "kernel /k/vmlinuz: ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: Load = %v, want %v starting with the path", c.name, err, c.want)
		}
	}
}

func TestBadParams(t *testing.T) {
	good := synthBzImage(8192)
	tooBig := defaultBz()
	tooBig.initSize = 100 << 20
	short := defaultBz()
	short.cmdlineSize = 10
	cases := []struct {
		name string
		p    tp
		want error
		msg  string
	}{
		{"initrd too big", tp{Initrd: make([]byte, 40<<20)}, ErrNoRoom, "initrd (40 MiB) does not fit"},
		{"cmdline over cmdline_size", tp{Kernel: short.build(), Cmdline: "console=ttyS0"}, ErrCmdline, "command line is 13 bytes, vmlinuz accepts at most 10 (cmdline_size)"},
		{"cmdline over MaxCmdline", tp{Cmdline: strings.Repeat("x", MaxCmdline)}, ErrCmdline, "command line is 4096 bytes"},
		{"cmdline with NUL", tp{Cmdline: "a\x00b"}, ErrCmdline, "NUL"},
		{"memory too small", tp{Mem: newMem(8 << 20)}, ErrNoRoom, "memory too small"},
		{"init_size beyond RAM", tp{Kernel: tooBig.build()}, ErrNoRoom, "memory too small: kernel needs RAM up to"},
		{"no CPUs", tp{CPUs: -1}, ErrParams, "cpus"},
		{"too many CPUs", tp{CPUs: 255}, ErrParams, "cpus 255"},
	}
	for _, c := range cases {
		p := c.p
		if p.Kernel == nil {
			p.Kernel = good
		}
		if p.Mem == nil {
			p.Mem = newMem(32 << 20)
		}
		if p.CPUs == 0 {
			p.CPUs = 1
		}
		p.KernelPath = "vmlinuz"
		_, err := ld(p)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: Load = %v, want %v containing %q", c.name, err, c.want, c.msg)
		}
	}
	if _, err := ld(tp{Kernel: good, CPUs: 1}); !errors.Is(err, ErrParams) {
		t.Errorf("nil memory: %v", err)
	}
}

// realKernels lists kernels to sanity-check against: EMBER_TEST_KERNEL,
// Debian's unpacked packages and ember's kernel cache.
func realKernels() []string {
	var paths []string
	if p := os.Getenv("EMBER_TEST_KERNEL"); p != "" {
		paths = append(paths, p)
	}
	for _, p := range []string{
		"/tmp/k/linux-image-6.1.0-56-amd64-unsigned/boot/vmlinuz-6.1.0-56-amd64",
		"/tmp/k/linux-image-6.1.0-56-cloud-amd64-unsigned/boot/vmlinuz-6.1.0-56-cloud-amd64",
	} {
		if _, err := os.Stat(p); err == nil {
			paths = append(paths, p)
		}
	}
	cached, _ := filepath.Glob(filepath.Join(os.Getenv("HOME"), ".cache/ember/kernels/*/vmlinu[xz]"))
	return append(paths, cached...)
}

func TestRealKernels(t *testing.T) {
	paths := realKernels()
	if len(paths) == 0 {
		t.Skip("SKIPPED: NO REAL KERNEL FOUND (set EMBER_TEST_KERNEL or unpack Debian's linux-image packages); only synthetic kernels were tested")
	}
	for _, p := range paths {
		kf, err := OpenKernel(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		proto := kf.Protocol
		kf.Close()
		k, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m := newMem(512 << 20)
		e, err := ld(tp{Kernel: k, KernelPath: p, CPUs: 2, Mem: m, ACPI: true,
			Initrd: bytes.Repeat([]byte("07070100"), 1<<17), Cmdline: "console=ttyS0 panic=-1"})
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if e.Protocol != proto || e.KernelEnd > e.Initrd[0] || e.Initrd[0]+e.Initrd[1] > 512<<20 || e.RSDP != AddrACPI {
			t.Fatalf("%s: implausible entry %+v", p, e)
		}
		if proto == Linux64 {
			pref := binary.LittleEndian.Uint64(k[offPrefAddress:])
			if e.BSP.RIP != pref+0x200 {
				t.Errorf("%s: entry %#x, want pref_address %#x + 0x200", p, e.BSP.RIP, pref)
			}
			if got := read(t, m, e.BSP.RIP-0x200, 512); !bytes.Equal(got, k[(int(k[offSetupSects])+1)*512:][:512]) {
				t.Errorf("%s: protected-mode code not at the load address", p)
			}
		}
		t.Logf("%s: %s entry %#x kernel end %#x initrd %#x", filepath.Base(p), e.Protocol, e.BSP.RIP, e.KernelEnd, e.Initrd[0])
	}
}

// allocated runs f and returns how many bytes it allocated.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestHugeKernelFileNotReadWhole: a 1 GiB file (sparse here) used to be
// read into memory whole before "not a Linux kernel"; only its header may
// be read now. A valid setup header in front of 1 GiB is refused by Check,
// before any guest memory exists, since the kernel cannot fit.
func TestHugeKernelFileNotReadWhole(t *testing.T) {
	for _, c := range []struct {
		head []byte
		want error
	}{
		{[]byte("MZ not a kernel"), ErrNotKernel},
		{synthBzImage(4096)[:1024], ErrNoRoom},
	} {
		p := filepath.Join(t.TempDir(), "huge")
		if err := os.WriteFile(p, c.head, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 1<<30); err != nil {
			t.Fatal(err)
		}
		var err error
		n := allocated(func() {
			var k *Kernel
			if k, err = OpenKernel(p); err != nil {
				return
			}
			defer k.Close()
			err = Check(Params{Kernel: k, CPUs: 1, RAM: []Range{{0, 512 << 20}}, Platform: testPlatform(true, nil)})
		})
		if n > 1<<20 {
			t.Errorf("OpenKernel and Check on a 1 GiB file allocated %d bytes", n)
		}
		if !errors.Is(err, c.want) {
			t.Errorf("1 GiB file starting %q: %v, want %v", c.head[:2], err, c.want)
		}
	}
}

// TestOpenKernelSpecialFiles: a FIFO or a directory is refused at once.
func TestOpenKernelSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, dir} {
		done := make(chan error, 1)
		go func() { _, err := OpenKernel(p); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("OpenKernel(%s) = %v", p, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("OpenKernel(%s) hangs", p)
		}
	}
}

// TestELFCompressedNoteBomb: an ELF vmlinux whose section name table is
// compressed (a zlib stream inflating 32 MiB of zeros, ~32 KiB in the
// file) made debug/elf inflate it on open; now nothing is inflated and the
// file is refused.
func TestELFCompressedNoteBomb(t *testing.T) {
	k := bombELF()
	var err error
	n := allocated(func() { _, err = detect(k) })
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("detect = %v, want ErrUnsupported", err)
	}
	if n > 1<<20 {
		t.Fatalf("an %d-byte ELF file made the parser allocate %d bytes", len(k), n)
	}
}

// bombELF is a PVH-less vmlinux whose note section and name table are
// compressed, each inflating to 32 MiB.
func bombELF() []byte {
	return elf64test.File{
		Progs: []elf64test.Prog{{Type: elf64test.PTLoad, Paddr: 0x1000000, Memsz: 0x1000, Data: []byte{0xf4}}},
		Sections: []elf64test.Section{{Name: ".note.x", Type: elf64test.SHTNote, Flags: elf64test.SHFCompressed,
			Data: elf64test.CompressedBomb(32 << 20)}},
		BombNames: 32 << 20,
	}.Bytes()
}
