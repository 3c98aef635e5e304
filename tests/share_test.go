package tests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestVMShare: on both kernels, a host directory shared
// read-write over virtio-fs behaves as POSIX test suites expect (the
// sharecheck guest program), its changes are on the host, and a read-only
// share refuses writes.
func TestVMShare(t *testing.T) {
	needVM(t)
	for _, flavour := range deviceKernels() {
		t.Run(flavour, func(t *testing.T) {
			// One vCPU and 300 files: creating files by the thousand on
			// 2 vCPUs is the heaviest exit and interrupt traffic of the
			// suite and has hung or crashed the nested guest (README).
			shareChecks(t, bootLimit, 300, "", vmArgs("--kernel", kernelArg(flavour))...)
		})
	}
}

// TestNestedShare: the same through --accel nested: the host's
// directories reach the VM that runs in L1.
func TestNestedShare(t *testing.T) {
	needNested(t)
	// The share crosses L1 over 9p, each file operation a round trip
	// through the emulator: fewer files than inside L1.
	shareChecks(t, nestedLimit, 300, "", "run", "--accel", "nested", "--cache-dir", env.cacheDir)
}

// TestVMShare9P: the same checks over virtio-9p, on the generic kernel
// and the minimal one (Debian's cloud kernel has no 9p).
func TestVMShare9P(t *testing.T) {
	needVM(t)
	for _, flavour := range []string{"amd64", "minimal"} {
		t.Run(flavour, func(t *testing.T) {
			shareChecks(t, bootLimit, 300, ",9p", vmArgs("--kernel", kernelArg(flavour))...)
		})
	}
}

// shareChecks runs sharecheck in a share; opt is added to the --share
// flags ("" for virtio-fs, ",9p").
func shareChecks(t *testing.T, limit time.Duration, files int, opt string, args ...string) {
	t.Helper()
	dir, ro := t.TempDir(), t.TempDir()
	prog, err := os.ReadFile(env.sharecheck)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(dir, "sharecheck"), prog, 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "from-host"), []byte("written on the host\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(ro, "keep"), []byte("unchanged\n"), 0o644))
	r := ember(t, limit, append(args, "--json", "--share", dir+opt, "--share", ro+":/ro,ro"+opt, "--", "sh", "-c",
		fmt.Sprintf("%s/sharecheck %s %d", dir, dir, files)+" && if echo x > /ro/new; then echo RO-WRITE-SUCCEEDED; else echo ro-write-refused; fi && cat /ro/keep")...)
	wantCode(t, r, 0)
	wantOut(t, r, "sharecheck: all passed")
	wantOut(t, r, "ro-write-refused")
	wantOut(t, r, "unchanged")
	// What the guest left is on the host.
	if b, _ := os.ReadFile(filepath.Join(dir, "mmapped")); len(b) != 8192 || !bytes.HasPrefix(b[4096:], []byte("written through mmap")) {
		t.Errorf("the guest's mmap writes are not in the host file (%d bytes)", len(b))
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "appended")); string(b) != "01234" {
		t.Errorf("appended file on the host: %q", b)
	}
	if st, err := os.Stat(filepath.Join(dir, "dated")); err != nil || !st.ModTime().Equal(time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)) {
		t.Errorf("the guest's mtime is not on the host: %v", err)
	}
	if st, err := os.Stat(filepath.Join(dir, "large")); err != nil || st.Size() != 5<<30+3 {
		t.Errorf("large file on the host: %v", err)
	}
	if es, _ := os.ReadDir(filepath.Join(dir, "many")); len(es) != files {
		t.Errorf("%d files on the host, want %d", len(es), files)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "link")); l != "sub/target" {
		t.Errorf("symlink on the host: %q", l)
	}
	if _, err := os.Stat(filepath.Join(ro, "new")); err == nil {
		t.Error("the read-only share was written")
	}
	dev, _ := report(t, r)["devices"].(map[string]any)
	name := "fs0"
	if opt == ",9p" {
		name = "9p0"
	}
	if d, _ := dev[name].(map[string]any); d == nil || d["requests"].(float64) == 0 {
		t.Errorf("no %s counters in the report: %v", name, dev)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
