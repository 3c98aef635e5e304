package images

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// FuzzArReader: a downloaded .deb is parsed before anything checks it.
func FuzzArReader(f *testing.F) {
	f.Add(arArchive(arMember("debian-binary", []byte("2.0\n")), arMember("data.tar.xz", []byte("odd"))))
	f.Add([]byte(arMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := newArReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		total := int64(0)
		for i := 0; i < 1000; i++ {
			_, size, err := a.Next()
			if err != nil {
				return
			}
			n, _ := io.Copy(io.Discard, a)
			if n > size {
				t.Fatalf("member yielded %d bytes, header says %d", n, size)
			}
			total += n
			if total > int64(len(b)) {
				t.Fatalf("read %d bytes from a %d-byte archive", total, len(b))
			}
		}
	})
}

// FuzzDebData: the ar walk plus the tar/decompressor choice.
func FuzzDebData(f *testing.F) {
	f.Add(arArchive(arMember("debian-binary", []byte("2.0\n")), arMember("data.tar.gz", gzipped([]byte("x")))))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, closeFn, err := debData(bytes.NewReader(b))
		if err != nil {
			return
		}
		defer closeFn()
		for i := 0; i < 100; i++ {
			if _, err := tr.Next(); err != nil {
				return
			}
		}
	})
}

// FuzzBzPayload: the setup header of a downloaded bzImage, then the Go
// decoders (xz goes to the xz command and is left out here).
func FuzzBzPayload(f *testing.F) {
	elfBody := append(append([]byte{}, magicELF...), "kernel"...)
	f.Add(bzImage(27, 0x3c0, gzipped(elfBody)))
	f.Add(bzImage(0, 0, elfBody))
	f.Add(bzImage(4, 8, append(append([]byte{}, magicLZ4...), 5, 0, 0, 0, 0x50, 0x7f, 'E', 'L', 'F', 0, 0, 0, 0)))
	f.Add(bzImage(4, 0, append(append([]byte{}, magicZstd...), 0, 0, 0, 0)))
	f.Fuzz(func(t *testing.T, bz []byte) {
		p, err := bzPayload(bz)
		if err != nil {
			return
		}
		if len(p) > len(bz) {
			t.Fatal("payload larger than the file")
		}
		if bytes.HasPrefix(p, magicXZ) {
			return
		}
		var out bytes.Buffer
		if err := decompressPayload(p, &out); err == nil && !bytes.HasPrefix(out.Bytes(), magicELF) {
			t.Fatal("accepted a payload that is not ELF")
		}
	})
}

// FuzzModulesDep: modules.dep is read from the (downloaded) cache entry.
func FuzzModulesDep(f *testing.F) {
	f.Add("kernel/a.ko: kernel/b.ko kernel/c.ko.xz\nkernel/b.ko:\nkernel/c.ko: kernel/b.ko\n", "a.ko")
	f.Add("a.ko: b.ko\nb.ko: a.ko\n", "b.ko")
	f.Fuzz(func(t *testing.T, dep, want string) {
		g, err := parseModulesDep(strings.NewReader(dep))
		if err != nil {
			return
		}
		mods, err := g.resolve([]string{want}, false)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, m := range mods {
			if seen[m] {
				t.Fatalf("%s listed twice: %q", m, mods)
			}
			seen[m] = true
			for _, d := range g[m] {
				if !seen[d] {
					t.Fatalf("%s loads before its dependency %s: %q", m, d, mods)
				}
			}
		}
	})
}
