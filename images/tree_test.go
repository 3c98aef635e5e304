package images

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTree is a kernel build tree with modules.order, kernel.release and
// the modules given (path → depends).
func fakeTree(t *testing.T, order string, mods map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "include", "config"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "include", "config", "kernel.release"), []byte("6.1.99-test\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "modules.order"), []byte(order), 0o644))
	for rel, deps := range mods {
		info := []byte("license=GPL\x00depends=" + deps + "\x00")
		must(os.MkdirAll(filepath.Join(dir, filepath.Dir(rel)), 0o755))
		must(os.WriteFile(filepath.Join(dir, rel), moduleELF(info, 0, uint64(len(info))), 0o644))
	}
	return dir
}

func TestTreeKernelModules(t *testing.T) {
	// Newer kernels list .o, older ones .ko; a listed module that was not
	// built is left out, and one the image does not want is not read in.
	dir := fakeTree(t, "drivers/virtio/virtio.o\ndrivers/virtio/virtio_ring.ko\ndrivers/virtio/virtio_mmio.o\ndrivers/block/virtio_blk.o\nsound/unbuilt.o\n",
		map[string]string{
			"drivers/virtio/virtio.ko":      "",
			"drivers/virtio/virtio_ring.ko": "",
			"drivers/virtio/virtio_mmio.ko": "virtio,virtio_ring",
			"drivers/block/virtio_blk.ko":   "virtio,virtio-ring",
		})
	k, err := TreeKernel(dir, filepath.Join(dir, "arch/x86/boot/bzImage"))
	if err != nil || k == nil {
		t.Fatalf("TreeKernel: %v, %v", k, err)
	}
	if k.Version != "6.1.99-test" {
		t.Fatalf("version %q", k.Version)
	}
	mods, err := kernelModules(k, l2Modules, false)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(mods, " ")
	// Dependencies before their users, each once.
	if !strings.HasSuffix(got, "drivers/block/virtio_blk.ko") || strings.Count(got, "virtio_ring.ko") != 1 ||
		strings.Index(got, "virtio_ring.ko") > strings.Index(got, "virtio_mmio.ko") || strings.Index(got, "drivers/virtio/virtio.ko") > strings.Index(got, "virtio_mmio.ko") {
		t.Fatalf("load order %q", got)
	}
	recs, err := moduleRecords(k, mods)
	if err != nil || len(recs) != len(mods)+1 || !strings.HasPrefix(recs[0].Name, "lib/modules/6.1.99-test/drivers/") {
		t.Fatalf("records %d for %d modules, %v", len(recs), len(mods), err)
	}
	// A rebuilt module makes a different image.
	info := []byte("license=GPL\x00depends=\x00vermagic=changed\x00")
	if err := os.WriteFile(filepath.Join(dir, "drivers/virtio/virtio.ko"), moduleELF(info, 0, uint64(len(info))), 0o644); err != nil {
		t.Fatal(err)
	}
	if k2, err := TreeKernel(dir, k.Path); err != nil || k2.treeSum == "" || k2.treeSum == k.treeSum {
		t.Fatalf("the sum did not change with a rebuilt module (%v)", err)
	}
}

func TestTreeKernelWithoutModules(t *testing.T) {
	dir := t.TempDir()
	if k, err := TreeKernel(dir, filepath.Join(dir, "vmlinux")); k != nil || err != nil {
		t.Fatalf("a tree without modules.order: %v, %v; want nil, nil", k, err)
	}
}

func TestTreeKernelErrors(t *testing.T) {
	dir := fakeTree(t, "drivers/virtio/virtio_mmio.o\n", map[string]string{"drivers/virtio/virtio_mmio.ko": "missing_dep"})
	if _, err := TreeKernel(dir, "bz"); err == nil || !strings.Contains(err.Error(), "missing_dep") {
		t.Fatalf("a module with an unbuilt dependency: %v", err)
	}
	dir = fakeTree(t, "../../etc/passwd.ko\n/etc/x.ko\n", nil)
	if k, err := TreeKernel(dir, "bz"); err != nil || len(k.deps) != 0 {
		t.Fatalf("paths outside the tree were read: %v, %v", k, err)
	}
	os.Remove(filepath.Join(dir, "include", "config", "kernel.release"))
	if _, err := TreeKernel(dir, "bz"); err == nil || !strings.Contains(err.Error(), "kernel.release") {
		t.Fatalf("no kernel.release: %v", err)
	}
}
