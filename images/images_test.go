package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ember-vmm/ember/boot/elf64/elf64test"
	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/cpio"
)

func readAll(t *testing.T, r cpio.Record) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// arMember is one ar(5) member header (60 bytes) plus data and padding.
func arMember(name string, data []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%-16s%-12d%-6d%-6d%-8o%-10d`\n", name, 0, 0, 0, 0o100644, len(data))
	b.Write(data)
	if len(data)%2 == 1 {
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func arArchive(members ...[]byte) []byte {
	b := []byte(arMagic)
	for _, m := range members {
		b = append(b, m...)
	}
	return b
}

func TestArHeaderLayout(t *testing.T) {
	m := arMember("debian-binary", []byte("2.0\n"))
	if len(m) != arHeaderSize+4 {
		t.Fatalf("member is %d bytes, want %d", len(m), arHeaderSize+4)
	}
	if got := string(m[arSizeOff : arSizeOff+arSizeLen]); strings.TrimSpace(got) != "4" {
		t.Errorf("size field %q", got)
	}
	if got := string(m[arFmagOff : arFmagOff+2]); got != arFmag {
		t.Errorf("fmag %q", got)
	}
}

func TestArReader(t *testing.T) {
	odd := []byte("odd")
	tests := []struct {
		name    string
		in      []byte
		want    []string // name=content
		wantErr bool
	}{
		{"deb", arArchive(arMember("debian-binary", []byte("2.0\n")), arMember("control.tar.xz/", odd), arMember("data.tar.xz", []byte("xy"))),
			[]string{"debian-binary=2.0\n", "control.tar.xz=odd", "data.tar.xz=xy"}, false},
		{"empty", arArchive(), nil, false},
		{"bad magic", []byte("!<arch>X"), nil, true},
		{"truncated header", append([]byte(arMagic), "debian-binary"...), nil, true},
		{"truncated data", arArchive(arMember("a", []byte("12345")))[:len(arMagic)+arHeaderSize+2], []string{"a=12"}, true},
		{"bad fmag", bytes.Replace(arArchive(arMember("a", nil)), []byte("`\n"), []byte("xx"), 1), nil, true},
		{"bad size", bytes.Replace(arArchive(arMember("a", nil)), []byte("0         `"), []byte("-1        `"), 1), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			a, err := newArReader(bytes.NewReader(tt.in))
			for err == nil {
				var name string
				if name, _, err = a.Next(); err != nil {
					break
				}
				var b []byte
				b, err = io.ReadAll(a)
				got = append(got, name+"="+string(b))
			}
			if errors.Is(err, io.EOF) {
				err = nil
			}
			if (err != nil) != tt.wantErr {
				t.Errorf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("members = %q, want %q", got, tt.want)
			}
		})
	}
}

// bzImage builds a minimal bzImage: boot sector, setupSects of setup code,
// then the payload after a gap of payloadOff bytes.
func bzImage(setupSects byte, payloadOff uint32, payload []byte) []byte {
	sects := int(setupSects)
	if sects == 0 {
		sects = 4
	}
	b := make([]byte, (sects+1)*512+int(payloadOff)+len(payload))
	b[hdrSetupSects] = setupSects
	copy(b[hdrMagic:], "HdrS")
	binary.LittleEndian.PutUint16(b[hdrVersion:], 0x20f)
	binary.LittleEndian.PutUint32(b[hdrPayloadOffset:], payloadOff)
	binary.LittleEndian.PutUint32(b[hdrPayloadLength:], uint32(len(payload)))
	copy(b[(sects+1)*512+int(payloadOff):], payload)
	return b
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// legacyLZ4 frames b the way the kernel build does (lz4 -l, then the
// uncompressed size appended).
func legacyLZ4(t *testing.T, b []byte) []byte {
	out := slices.Clone(magicLZ4)
	for len(b) > 0 {
		n := min(len(b), lz4LegacyBlock)
		dst := make([]byte, lz4.CompressBlockBound(n))
		m, err := lz4.CompressBlock(b[:n], dst, nil)
		if err != nil || m == 0 {
			t.Fatalf("lz4: %d, %v", m, err)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(m))
		out = append(out, dst[:m]...)
		b = b[n:]
	}
	return binary.LittleEndian.AppendUint32(out, 12345678)
}

func TestSetupHeaderOffsets(t *testing.T) {
	// Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header".
	for name, got := range map[string]int{"setup_sects": hdrSetupSects, "header": hdrMagic, "version": hdrVersion,
		"payload_offset": hdrPayloadOffset, "payload_length": hdrPayloadLength} {
		want := map[string]int{"setup_sects": 0x1f1, "header": 0x202, "version": 0x206, "payload_offset": 0x248, "payload_length": 0x24c}[name]
		if got != want {
			t.Errorf("%s at %#x, want %#x", name, got, want)
		}
	}
}

func TestExtractVmlinux(t *testing.T) {
	elfBody := append(slices.Clone(magicELF), bytes.Repeat([]byte("kernel text "), 5000)...)
	big := append(slices.Clone(magicELF), bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 2*lz4LegacyBlock/7)...)
	tests := []struct {
		name    string
		bz      []byte
		want    []byte
		wantErr string
	}{
		{"gzip", bzImage(27, 0x3c0, append(gzipped(elfBody), 1, 2, 3, 4)), elfBody, ""},
		{"gzip setup_sects 0", bzImage(0, 0, gzipped(elfBody)), elfBody, ""},
		{"lz4 legacy", bzImage(30, 0x100, legacyLZ4(t, elfBody)), elfBody, ""},
		{"lz4 legacy, two blocks", bzImage(30, 0x100, legacyLZ4(t, big)), big, ""},
		{"plain ELF", bzImage(4, 0, elfBody), elfBody, ""},
		{"not ELF", bzImage(4, 0, gzipped([]byte("MZ not an elf"))), nil, "not an ELF"},
		{"unknown method", bzImage(4, 0, []byte("BZh9xxxx")), nil, "unsupported method"},
		{"too short", []byte("HdrS"), nil, "not a bzImage"},
		{"payload outside", func() []byte { b := bzImage(4, 0, gzipped(elfBody)); return b[:len(b)-10] }(), nil, "outside"},
		{"old protocol", func() []byte {
			b := bzImage(4, 0, gzipped(elfBody))
			binary.LittleEndian.PutUint16(b[hdrVersion:], 0x206)
			return b
		}(), nil, "2.08+"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := ExtractVmlinux(context.Background(), tt.bz, &out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), tt.want) {
				t.Errorf("got %d bytes, want %d", out.Len(), len(tt.want))
			}
		})
	}
}

func TestModulesDep(t *testing.T) {
	const dep = `kernel/fs/9p/9p.ko: kernel/fs/fscache/fscache.ko kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio_ring.ko.xz kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/virtio/virtio.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
`
	g, err := parseModulesDep(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		wanted   []string
		required bool
		want     []string
		wantErr  bool
	}{
		{[]string{"fs/9p/9p.ko"}, true, []string{"kernel/fs/netfs/netfs.ko", "kernel/net/9p/9pnet.ko", "kernel/fs/fscache/fscache.ko", "kernel/fs/9p/9p.ko"}, false},
		{[]string{"net/9p/9pnet_virtio.ko", "fs/9p/9p.ko"}, true, []string{"kernel/drivers/virtio/virtio.ko", "kernel/net/9p/9pnet.ko", "kernel/drivers/virtio/virtio_ring.ko", "kernel/net/9p/9pnet_virtio.ko", "kernel/fs/netfs/netfs.ko", "kernel/fs/fscache/fscache.ko", "kernel/fs/9p/9p.ko"}, false},
		{[]string{"drivers/char/hw_random/virtio_rng.ko"}, true, []string{"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/char/hw_random/virtio-rng.ko"}, false},
		{[]string{"missing.ko", "fs/netfs/netfs.ko"}, false, []string{"kernel/fs/netfs/netfs.ko"}, false},
		{[]string{"missing.ko"}, true, nil, true},
	}
	for _, tt := range tests {
		got, err := g.resolve(tt.wanted, tt.required)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("resolve(%q) = %q, %v; want %q (err %v)", tt.wanted, got, err, tt.want, tt.wantErr)
		}
	}
	// Written and read back, the graph is the same.
	var buf bytes.Buffer
	if err := writeModulesDep(&buf, g); err != nil {
		t.Fatal(err)
	}
	g2, err := parseModulesDep(&buf)
	if err != nil || !reflect.DeepEqual(g, g2) {
		t.Errorf("round trip: %v, %v", g2, err)
	}
	for _, bad := range []string{"no colon here", ": dep.ko", "a b.ko: c.ko"} {
		if _, err := parseModulesDep(strings.NewReader(bad)); err == nil {
			t.Errorf("parseModulesDep(%q) succeeded", bad)
		}
	}
	cyc, _ := parseModulesDep(strings.NewReader("a.ko: b.ko\nb.ko: a.ko\n"))
	if _, err := cyc.resolve([]string{"a.ko"}, true); err == nil {
		t.Error("dependency cycle not reported")
	}
	dangling, _ := parseModulesDep(strings.NewReader("a.ko: b.ko\n"))
	if _, err := dangling.resolve([]string{"a.ko"}, true); err == nil {
		t.Error("dependency missing from modules.dep not reported")
	}
}

func TestDepGraphFromModinfo(t *testing.T) {
	direct := map[string][]string{
		"kernel/arch/x86/kvm/kvm-amd.ko":    {"kvm", "ccp"},
		"kernel/arch/x86/kvm/kvm.ko":        {"irqbypass"},
		"kernel/virt/lib/irqbypass.ko":      nil,
		"kernel/drivers/crypto/ccp/ccp.ko":  nil,
		"kernel/drivers/virtio/virtio_x.ko": {"kvm_amd"},
	}
	g, err := depGraphFromModinfo(direct)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/crypto/ccp/ccp.ko", "kernel/virt/lib/irqbypass.ko", "kernel/arch/x86/kvm/kvm.ko"}
	// modules.dep lists them last-loaded first; reversed they are a load order.
	got := slices.Clone(g["kernel/arch/x86/kvm/kvm-amd.ko"])
	slices.Reverse(got)
	if !slices.Equal(got, []string{"kernel/virt/lib/irqbypass.ko", "kernel/arch/x86/kvm/kvm.ko", "kernel/drivers/crypto/ccp/ccp.ko"}) {
		t.Errorf("kvm-amd deps %q", got)
	}
	order, err := g.resolve([]string{"kvm-amd.ko"}, true)
	if err != nil || len(order) != 4 || order[3] != "kernel/arch/x86/kvm/kvm-amd.ko" {
		t.Errorf("resolve = %q, %v", order, err)
	}
	for _, m := range want {
		if slices.Index(order, m) > slices.Index(order, "kernel/arch/x86/kvm/kvm-amd.ko") {
			t.Errorf("%s loads after kvm-amd: %q", m, order)
		}
	}
	if slices.Index(order, "kernel/virt/lib/irqbypass.ko") > slices.Index(order, "kernel/arch/x86/kvm/kvm.ko") {
		t.Errorf("irqbypass after kvm: %q", order)
	}
	if _, err := depGraphFromModinfo(map[string][]string{"kernel/a.ko": {"nothere"}}); err == nil {
		t.Error("missing dependency not reported")
	}
}

func TestModName(t *testing.T) {
	for in, want := range map[string]string{"kernel/arch/x86/kvm/kvm-amd.ko": "kvm_amd", "virtio-rng.ko.xz": "virtio_rng", "9p.ko": "9p", "x/y.ko.zst": "y"} {
		if got := modName(in); got != want {
			t.Errorf("modName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseDepends(t *testing.T) {
	out := []byte("linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n  Recommends: firmware-linux\n")
	if v, err := parseDepends(out, "amd64", "linux-image-amd64"); err != nil || v != "6.1.0-56-amd64" {
		t.Errorf("= %q, %v", v, err)
	}
	// The cloud metapackage's dependency must not match the generic flavour.
	out = []byte("linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n")
	if v, err := parseDepends(out, "amd64", "linux-image-amd64"); err == nil {
		t.Errorf("= %q for the wrong flavour", v)
	}
	if _, err := parseDepends(nil, "amd64", "linux-image-amd64"); err == nil || !strings.Contains(err.Error(), "apt-get update") {
		t.Errorf("err = %v, want a hint to run apt-get update", err)
	}
}

func TestCacheKeyStable(t *testing.T) {
	k := initramfsKey([]byte("init"), "6.1.0-56-amd64", []string{"kernel/a.ko"}, "v0.14.0", []string{"ls"})
	// Pinned: a change here rebuilds every user's cached image, so it must
	// be deliberate (bump builderVersion instead of changing the hashing).
	if k != initramfsKey([]byte("init"), "6.1.0-56-amd64", []string{"kernel/a.ko"}, "v0.14.0", []string{"ls"}) {
		t.Fatal("key differs between calls")
	}
	for _, other := range []string{
		initramfsKey([]byte("init2"), "6.1.0-56-amd64", []string{"kernel/a.ko"}, "v0.14.0", []string{"ls"}),
		initramfsKey([]byte("init"), "6.1.0-57-amd64", []string{"kernel/a.ko"}, "v0.14.0", []string{"ls"}),
		initramfsKey([]byte("init"), "6.1.0-56-amd64", []string{"kernel/a.ko", "kernel/b.ko"}, "v0.14.0", []string{"ls"}),
		initramfsKey([]byte("init"), "6.1.0-56-amd64", []string{"kernel/a.ko"}, "v0.15.0", []string{"ls"}),
		initramfsKey([]byte("init"), "6.1.0-56-amd64", []string{"kernel/a.ko"}, "v0.14.0", []string{"ls", "cat"}),
	} {
		if other == k {
			t.Errorf("different inputs share key %s", k)
		}
	}
	// Length-prefixed parts: moving bytes between parts changes the key.
	if hashOf([]byte("ab"), []byte("c")) == hashOf([]byte("a"), []byte("bc")) {
		t.Error("hashOf is ambiguous")
	}
	if got := hashOf([]byte("x")); got != "553f121d1ecef2a1" {
		t.Errorf("hashOf(x) = %s; the cache key scheme changed", got)
	}
}

func TestCleanTarPath(t *testing.T) {
	for in, want := range map[string]string{"./boot/vmlinuz-1": "boot/vmlinuz-1", "../../etc/passwd": "etc/passwd", "/lib/modules/x/../../../y": "y", "./": ""} {
		if got := cleanTarPath(in); got != want {
			t.Errorf("cleanTarPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// syntheticDeb is a kernel package without modules.
func syntheticDeb(t *testing.T, version string, files map[string]string) string {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.WriteHeader(&tar.Header{Name: "./lib/modules/" + version + "/", Mode: 0o755, Typeflag: tar.TypeDir})
	tw.Close()
	deb := arArchive(arMember("debian-binary", []byte("2.0\n")), arMember("control.tar.gz", gzipped(nil)), arMember("data.tar.gz", gzipped(tb.Bytes())))
	p := filepath.Join(t.TempDir(), "k.deb")
	if err := os.WriteFile(p, deb, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExtractKernelAndCacheEntry(t *testing.T) {
	const v = "6.1.0-99-test"
	deb := syntheticDeb(t, v, map[string]string{
		"./boot/vmlinuz-" + v:                   "bzimage",
		"./boot/config-" + v:                    "CONFIG_PVH=y\n",
		"./boot/System.map-" + v:                "not extracted",
		"./lib/modules/" + v + "/modules.order": "",
		"./usr/share/doc/x/changelog":           "not extracted",
	})
	c := &Cache{Dir: t.TempDir()}
	dir := filepath.Join(c.Dir, "kernels", v)
	m, err := extractKernel(deb, v, dir)
	if err != nil {
		t.Fatal(err)
	}
	m.Flavour = "test"
	if err := m.sum(dir); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, "kernel.json"), b, 0o644)
	k, err := c.kernelAt("test", v)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(k.Path); string(got) != "bzimage" {
		t.Errorf("vmlinuz = %q", got)
	}
	for _, f := range []string{k.Config, filepath.Join(k.ModulesDir, "modules.dep"), filepath.Join(k.ModulesDir, "modules.order")} {
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "System.map")); err == nil {
		t.Error("extracted more than needed")
	}
	// A damaged file makes the entry unusable, so Kernel fetches again:
	// a truncated one, and one of the right size with other bytes.
	os.WriteFile(k.Path, []byte("bzimag"), 0o644)
	if _, err := c.kernelAt("test", v); err == nil {
		t.Error("truncated vmlinuz not noticed")
	}
	os.WriteFile(k.Path, []byte("bzimaX"+"e"), 0o644)
	if _, err := c.kernelAt("test", v); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("same-size damage: %v", err)
	}
	for _, bad := range []string{"", "..", "a/b"} {
		if _, err := c.kernelAt("test", bad); err == nil {
			t.Errorf("kernelAt(%q) succeeded", bad)
		}
	}
	// A package without the kernel is an error naming what is missing.
	deb = syntheticDeb(t, v, map[string]string{"./boot/config-" + v: "x"})
	if _, err := extractKernel(deb, v, t.TempDir()); err == nil || !strings.Contains(err.Error(), "vmlinuz") {
		t.Errorf("err = %v, want one naming vmlinuz", err)
	}
}

func TestKernelRejectsUnknownFlavour(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	if _, err := ResolveKernel(context.Background(), c, "debian:arm64"); err == nil || !strings.Contains(err.Error(), "arm64") {
		t.Errorf("err = %v", err)
	}
	if _, err := ResolveKernel(context.Background(), c, "/boot/vmlinuz"); err == nil {
		t.Error("a path is not a debian: spec")
	}
}

func TestDecompressModule(t *testing.T) {
	name, b, err := decompressModule("kernel/a.ko.gz", gzipped([]byte("\x7fELF")))
	if err != nil || name != "kernel/a.ko" || string(b) != "\x7fELF" {
		t.Errorf("= %q, %q, %v", name, b, err)
	}
	if _, _, err := decompressModule("kernel/a.ko.gz", []byte("junk")); err == nil {
		t.Error("bad gzip accepted")
	}
	if _, _, err := decompressModule("kernel/a.txt", nil); err == nil {
		t.Error("non-module accepted")
	}
}

func TestLock(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	unlock, err := c.lock(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	// A second holder (another open file description, like another
	// process) waits until the context ends.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.lock(ctx, "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("second lock: %v, want context.Canceled", err)
	}
	unlock()
	unlock2, err := c.lock(ctx, "x")
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	unlock2()
}

// moduleELF is a relocatable ELF64 module with one .modinfo section
// (flags and claimed size as given).
func moduleELF(modinfo []byte, flags, size uint64) []byte {
	return elf64test.File{Type: elf64test.ETRel, Sections: []elf64test.Section{
		{Name: ".modinfo", Type: elf64test.SHTProgbits, Flags: flags, Data: modinfo, Size: size}}}.Bytes()
}

func TestModinfoDepends(t *testing.T) {
	info := []byte("license=GPL\x00depends=virtio,virtio_ring\x00name=virtio_blk\x00")
	ds, err := modinfoDepends(moduleELF(info, 0, uint64(len(info))))
	if err != nil || strings.Join(ds, ",") != "virtio,virtio_ring" {
		t.Fatalf("modinfoDepends = %v, %v", ds, err)
	}
}

// TestModinfoBomb is the regression test for module parsing through
// debug/elf, which inflates a compressed .modinfo (here ~32 KiB inflating
// to 32 MiB): the module is refused and almost nothing is allocated.
func TestModinfoBomb(t *testing.T) {
	ko := moduleELF(elf64test.CompressedBomb(32<<20), elf64test.SHFCompressed, 0)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := modinfoDepends(ko)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a compressed .modinfo was accepted")
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Fatalf("parsing a %d-byte module allocated %d bytes", len(ko), d)
	}
}

// fakeCPIO writes a newc-looking archive of n bytes.
func fakeCPIO(n int) func(out string) func() error {
	return func(out string) func() error {
		return func() error {
			b := append([]byte("070701"), make([]byte, n-6)...)
			return writeAtomic(out, func(w io.Writer) error { _, err := w.Write(b); return err })
		}
	}
}

// TestDamagedImageRebuilt is the regression test for an initramfs
// truncated to 200 bytes being taken as valid (only its magic was
// checked): size and checksum are recorded and verified now.
func TestDamagedImageRebuilt(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	out := filepath.Join(c.Dir, "initramfs", "x.cpio")
	builds := 0
	build := func() error { builds++; return fakeCPIO(64 << 10)(out)() }
	ctx := context.Background()
	if err := c.buildOnce(ctx, out, "x", build); err != nil || builds != 1 {
		t.Fatalf("first build: %v, %d builds", err, builds)
	}
	if err := c.buildOnce(ctx, out, "x", build); err != nil || builds != 1 {
		t.Fatalf("a valid entry was rebuilt: %v, %d builds", err, builds)
	}
	if err := os.Truncate(out, 200); err != nil {
		t.Fatal(err)
	}
	if err := c.buildOnce(ctx, out, "x", build); err != nil || builds != 2 {
		t.Fatalf("truncated entry: %v, %d builds, want a rebuild", err, builds)
	}
	// Same size, other bytes (and so a new modification time).
	f, _ := os.OpenFile(out, os.O_WRONLY, 0)
	f.WriteAt([]byte("x"), 1000)
	f.Close()
	if err := c.buildOnce(ctx, out, "x", build); err != nil || builds != 3 {
		t.Fatalf("altered entry: %v, %d builds, want a rebuild", err, builds)
	}
	// An entry without its sum (a crash between rename and sum) is rebuilt.
	os.Remove(sumPath(out))
	if err := c.buildOnce(ctx, out, "x", build); err != nil || builds != 4 {
		t.Fatalf("entry without sum: %v, %d builds", err, builds)
	}
}

// TestSweep removes temporary files of processes that are gone and keeps
// those of live ones.
func TestSweep(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	os.MkdirAll(filepath.Join(c.Dir, "initramfs"), 0o755)
	dead := []string{".tmp-999999999-a", "fetch-999999998-b", filepath.Join("initramfs", ".tmp-999999997-c")}
	live := []string{".tmp-" + strconv.Itoa(os.Getpid()) + "-d", "build-1-e", "kernels.keep"}
	for _, n := range append(append([]string{}, dead...), live...) {
		if err := os.WriteFile(filepath.Join(c.Dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	unlock, err := c.lock(context.Background(), "any")
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	for _, n := range dead {
		if _, err := os.Stat(filepath.Join(c.Dir, n)); err == nil {
			t.Errorf("%s of a dead process was kept", n)
		}
	}
	for _, n := range live {
		if _, err := os.Stat(filepath.Join(c.Dir, n)); err != nil {
			t.Errorf("%s was removed: %v", n, err)
		}
	}
}
