package images

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/u-root/u-root/pkg/cpio"
)

// integration skips unless EMBER_IMAGES_INTEGRATION=1: these tests run
// apt-get, reach Debian's archive and the Go module proxy, and build Go code.
// EMBER_IMAGES_CACHE names the cache to use (default: a fresh one).
func integration(t *testing.T) *Cache {
	t.Helper()
	if os.Getenv("EMBER_IMAGES_INTEGRATION") != "1" {
		t.Skip("set EMBER_IMAGES_INTEGRATION=1 to fetch Debian kernels and build images (needs apt and network)")
	}
	dir := os.Getenv("EMBER_IMAGES_CACHE")
	if dir == "" {
		dir = t.TempDir()
	}
	return &Cache{Dir: dir, Progress: testWriter{t}}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// guestInit builds the guest init the way the Makefile does.
func guestInit(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ember-init")
	cmd := exec.Command("go", "build", "-o", out, "../guest/init")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building guest init: %v\n%s", err, b)
	}
	return out
}

func TestIntegrationImages(t *testing.T) {
	c := integration(t)
	ctx := context.Background()
	ib := guestInit(t)
	for _, fl := range Flavours {
		t.Run(fl, func(t *testing.T) {
			start := time.Now()
			k, err := ResolveKernel(ctx, c, "debian:"+fl)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("kernel %s in %s", k.Version, time.Since(start))
			if !strings.HasSuffix(k.Version, "-"+fl) {
				t.Errorf("version %q does not end in -%s", k.Version, fl)
			}
			cfg, err := os.ReadFile(k.Config)
			if err != nil || !bytes.Contains(cfg, []byte("CONFIG_PVH=y")) {
				t.Errorf("config %s: lacks CONFIG_PVH=y (%v)", k.Config, err)
			}
			// A second call is served from the cache.
			start = time.Now()
			if k2, err := c.Kernel(ctx, fl); err != nil || !reflect.DeepEqual(k2, k) {
				t.Errorf("cached Kernel = %+v, %v; want %+v", k2, err, k)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("cached Kernel took %s", d)
			}

			start = time.Now()
			vm, err := c.Vmlinux(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("vmlinux in %s", time.Since(start))
			if !hasPVHNote(t, vm) {
				t.Errorf("%s: no PVH entry note (Xen, type 18)", vm)
			}

			start = time.Now()
			img, err := c.Initramfs(ctx, k, ib)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(img)
			t.Logf("initramfs %s: %d bytes in %s", img, st.Size(), time.Since(start))
			recs := readCPIO(t, img)
			for _, want := range []string{"init", "bbin/gosh", "bbin/ls", "bin/poweroff", "bin/ember-info", "bin/sh"} {
				if _, ok := recs[want]; !ok {
					t.Errorf("%s lacks %s", img, want)
				}
			}
			if r, ok := recs["bin/poweroff"]; ok && r.Mode&cpio.S_IFMT != cpio.S_IFLNK {
				t.Errorf("bin/poweroff is not a symlink")
			}
			mods := checkModules(t, recs)
			if !slices.ContainsFunc(mods, func(m string) bool { return strings.HasSuffix(m, "/virtio_mmio.ko") }) {
				t.Errorf("default image lacks virtio_mmio: %v", mods)
			}
			if again, err := c.Initramfs(ctx, k, ib); err != nil || again != img {
				t.Errorf("second Initramfs = %q, %v; want the cached %q", again, err, img)
			}

			if fl != "amd64" {
				return
			}
			start = time.Now()
			l1, err := c.L1Initramfs(ctx, k, ib)
			if err != nil {
				t.Fatal(err)
			}
			st, _ = os.Stat(l1)
			t.Logf("L1 initramfs %s: %d bytes in %s", l1, st.Size(), time.Since(start))
			mods = checkModules(t, readCPIO(t, l1))
			pos := func(name string) int {
				return slices.IndexFunc(mods, func(m string) bool { return modName(m) == name })
			}
			for _, pair := range [][2]string{{"irqbypass", "kvm"}, {"ccp", "kvm_amd"}, {"kvm", "kvm_amd"}, {"virtio", "virtio_pci"}, {"9pnet", "9pnet_virtio"}, {"netfs", "9p"}, {"fscache", "9p"}} {
				a, b := pos(pair[0]), pos(pair[1])
				if a < 0 || b < 0 || a > b {
					t.Errorf("L1 modules: %s (at %d) must load before %s (at %d): %v", pair[0], a, pair[1], b, mods)
				}
			}
		})
	}
}

// checkModules checks that proto.ModulesFile lists files the archive holds.
func checkModules(t *testing.T, recs map[string]cpio.Record) []string {
	t.Helper()
	r, ok := recs[strings.TrimPrefix(proto.ModulesFile, "/")]
	if !ok {
		t.Fatalf("no %s", proto.ModulesFile)
	}
	var mods []string
	for _, l := range strings.Fields(string(readAll(t, r))) {
		if _, ok := recs[strings.TrimPrefix(l, "/")]; !ok {
			t.Errorf("%s lists %s, which is not in the archive", proto.ModulesFile, l)
		}
		mods = append(mods, l)
	}
	return mods
}

func readCPIO(t *testing.T, path string) map[string]cpio.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	rr, err := cpio.Format("newc")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(rr.Reader(f))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	m := map[string]cpio.Record{}
	for _, r := range recs {
		m[strings.TrimPrefix(r.Name, "/")] = r
	}
	return m
}

// hasPVHNote looks for XEN_ELFNOTE_PHYS32_ENTRY: an ELF note named "Xen" of
// type 18 (xen/include/public/elfnote.h), which marks the PVH entry.
func hasPVHNote(t *testing.T, path string) bool {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		for len(b) >= 12 {
			nsz, dsz, typ := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])
			name := (nsz + 3) &^ 3
			desc := (dsz + 3) &^ 3
			if uint64(12)+uint64(name)+uint64(desc) > uint64(len(b)) {
				break
			}
			if typ == 18 && string(bytes.TrimRight(b[12:12+nsz], "\x00")) == "Xen" {
				return true
			}
			b = b[12+name+desc:]
		}
	}
	return false
}
