package images

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMissingOptions(t *testing.T) {
	frag := "# c\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=m\n# CONFIG_E is not set\n"
	cfg := "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_BB=y\nCONFIG_E=y\n"
	if got := missingOptions(frag, cfg); strings.Join(got, ",") != "CONFIG_B,no CONFIG_E" {
		t.Fatalf("missingOptions = %v", got)
	}
}

// The fragment asks for what ember's devices need, and nothing is a
// module.
func TestMinimalFragment(t *testing.T) {
	for _, want := range []string{"CONFIG_VIRTIO_MMIO=y", "CONFIG_VIRTIO_BLK=y", "CONFIG_VIRTIO_NET=y", "CONFIG_VIRTIO_VSOCKETS=y",
		"CONFIG_HW_RANDOM_VIRTIO=y", "CONFIG_VIRTIO_CONSOLE=y", "CONFIG_VIRTIO_FS=y", "CONFIG_9P_FS=y", "CONFIG_NET_9P_VIRTIO=y",
		"CONFIG_SERIAL_8250_CONSOLE=y", "CONFIG_X86_IOPL_IOPERM=y", "CONFIG_ACPI=y", "CONFIG_PVH=y", "CONFIG_EXT4_FS=y", "CONFIG_TMPFS=y", "CONFIG_DEVTMPFS=y",
		"# CONFIG_MODULES is not set", "# CONFIG_LEGACY_PTYS is not set"} {
		if !strings.Contains(minimalFragment, want+"\n") {
			t.Errorf("minimal.config lacks %q", want)
		}
	}
	if strings.Contains(minimalFragment, "=m\n") {
		t.Error("minimal.config asks for a module")
	}
}

func TestMinimalKernelNotBuilt(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	if _, err := c.MinimalKernel(); !errors.Is(err, ErrMinimalNotBuilt) {
		t.Fatalf("MinimalKernel on an empty cache: %v", err)
	}
	// A build that did not finish is not a kernel.
	if err := os.MkdirAll(c.minimalDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.minimalDir(), "bzImage"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MinimalKernel(); !errors.Is(err, ErrMinimalNotBuilt) {
		t.Fatalf("MinimalKernel without done: %v", err)
	}
	if err := os.WriteFile(filepath.Join(c.minimalDir(), "done"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := c.MinimalKernel(); err != nil || filepath.Base(p) != "bzImage" {
		t.Fatalf("MinimalKernel: %s %v", p, err)
	}
}

func TestMinimalCopyAndTail(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("one\ntwo\nthree\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "out", "dst")
	if err := copyFile(src, dst); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "one\ntwo\nthree\n" {
		t.Fatalf("copy: %q %v", b, err)
	}
	if got := fileTail(src, 2); got != "two\nthree" {
		t.Fatalf("fileTail = %q", got)
	}
}
