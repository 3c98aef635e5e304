package nested

import (
	"bytes"
	"context"
	"debug/elf"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/u-root/u-root/pkg/cpio"
)

// l1KernelDir is the unpacked Debian package of the generic amd64 kernel
// (dpkg-deb -x linux-image-6.1.0-56-amd64-unsigned_*.deb DIR).
const (
	l1KernelDir     = "/tmp/k/linux-image-6.1.0-56-amd64-unsigned"
	l1KernelVersion = "6.1.0-56-amd64"
)

// l1Wanted are the modules L1 needs; their dependencies come first. The
// 9p transport is requested by name at mount time, so it is listed.
var l1Wanted = []string{"kvm_amd", "virtio_pci", "9pnet_virtio", "9p"}

// TestL1Integration boots a real L1 guest under QEMU/TCG with an
// initramfs made here (ember's init and the KVM/virtio/9p modules) and
// runs a host shell command in it.
func TestL1Integration(t *testing.T) {
	if os.Getenv("EMBER_NESTED_INTEGRATION") != "1" {
		t.Skip("set EMBER_NESTED_INTEGRATION=1 to boot an L1 guest under QEMU (needs qemu-system-x86 and " + l1KernelDir + ")")
	}
	if err := Check(); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(l1KernelDir, "boot", "vmlinuz-"+l1KernelVersion)
	modDir := filepath.Join(l1KernelDir, "lib", "modules", l1KernelVersion)
	dir := t.TempDir()
	initBin := filepath.Join(dir, "ember-init")
	build := exec.Command("go", "build", "-o", initBin, "github.com/ember-vmm/ember/guest/init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the init: %v\n%s", err, out)
	}
	initrd := filepath.Join(dir, "l1.cpio")
	if err := writeL1Initramfs(initrd, initBin, modDir, l1Wanted); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{
		Kernel: kernel, Initrd: initrd,
		Args: []string{"/bin/sh", "-c", "ls -l /dev/kvm; echo dir=$(pwd) env=$EMBER_T; exit 7"},
		Env:  []string{"EMBER_T=yes"},
		Dir:  "/usr", Stdout: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("L1 boot %v, wall %v; console:\n%s", res.L1Boot, res.Wall, out.String())
	if res.ExitStatus != 7 {
		t.Errorf("exit status %d, want 7", res.ExitStatus)
	}
	if !strings.Contains(out.String(), "/dev/kvm") || !strings.HasPrefix(strings.TrimSpace(out.String()), "crw") {
		t.Errorf("/dev/kvm not listed as a character device:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "dir=/usr env=yes") {
		t.Errorf("working directory or environment not passed:\n%s", out.String())
	}
	if res.L1Boot <= 0 || res.L1Boot > res.Wall {
		t.Errorf("L1 boot %v (wall %v)", res.L1Boot, res.Wall)
	}
}

// TestInitCommandModeUnderQEMU boots ember's init in command mode under
// plain QEMU (no ember control device): it must run the command on the
// console, find itself as sh and ember-info, and end the VM through the
// kernel's power-off when the port report is not available.
func TestInitCommandModeUnderQEMU(t *testing.T) {
	if os.Getenv("EMBER_NESTED_INTEGRATION") != "1" {
		t.Skip("set EMBER_NESTED_INTEGRATION=1 to boot a guest under QEMU")
	}
	if err := Check(); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(l1KernelDir, "boot", "vmlinuz-"+l1KernelVersion)
	modDir := filepath.Join(l1KernelDir, "lib", "modules", l1KernelVersion)
	dir := t.TempDir()
	initBin := filepath.Join(dir, "ember-init")
	build := exec.Command("go", "build", "-o", initBin, "github.com/ember-vmm/ember/guest/init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the init: %v\n%s", err, out)
	}
	base := filepath.Join(dir, "base.cpio")
	if err := writeL1Initramfs(base, initBin, modDir, nil, cpio.Symlink("bin/sh", "/init"), cpio.Symlink("bin/ember-info", "/init")); err != nil {
		t.Fatal(err)
	}
	o := Options{Initrd: base, Args: []string{"sh", "-c", "ember-info; echo done-$((1+2)); exit 3"}}
	initrd := filepath.Join(dir, "initrd")
	arch, err := proto.Archive(proto.Run{Args: o.Args})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, append(b, arch...), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, QEMUBinary, "-accel", "tcg", "-smp", "2", "-m", "512", "-nodefaults",
		"-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet loglevel=0 panic=-1").CombinedOutput()
	t.Logf("QEMU ran %v: %v; console:\n%s", time.Since(start), err, out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kernel: " + l1KernelVersion, "cpus: 2", " MiB\r\n", " ms to init", "done-3"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("console lacks %q", want)
		}
	}
}

// writeL1Initramfs writes a newc archive: init at /init, /dev/console, the
// wanted modules with their dependencies (dependencies first) and
// proto.ModulesFile listing them.
func writeL1Initramfs(out, initBin, modDir string, wanted []string, extra ...cpio.Record) error {
	byName := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".ko") {
			byName[strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko"), "-", "_")] = p
		}
		return err
	})
	if err != nil {
		return err
	}
	var order []string
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		if seen[name] {
			return nil
		}
		seen[name] = true
		p, ok := byName[name]
		if !ok {
			return &fs.PathError{Op: "find module", Path: name, Err: fs.ErrNotExist}
		}
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		order = append(order, p)
		return nil
	}
	for _, w := range wanted {
		if err := visit(w); err != nil {
			return err
		}
	}
	ib, err := os.ReadFile(initBin)
	if err != nil {
		return err
	}
	recs := append([]cpio.Record{cpio.StaticFile("init", string(ib), 0o755), cpio.CharDev("dev/console", 0o600, 5, 1)}, extra...)
	var list []string
	for _, p := range order {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(modDir, p)
		name := filepath.Join("lib/modules", l1KernelVersion, rel)
		recs = append(recs, cpio.StaticFile(name, string(b), 0o644))
		list = append(list, "/"+name)
	}
	recs = append(recs, cpio.StaticFile(strings.TrimPrefix(proto.ModulesFile, "/"), strings.Join(list, "\n")+"\n", 0o644))
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
		return err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// moduleDepends reads a module's "depends=" from its .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	b, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}
