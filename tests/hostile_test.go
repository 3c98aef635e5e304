package tests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// TestVMHostileGuest runs a guest program that writes garbage to every I/O
// port and pokes unmapped MMIO. ember must neither crash nor hang, and the
// guest must still be able to report its exit status.
func TestVMHostileGuest(t *testing.T) {
	besideVM(t)
	initrd := hostileInitrd(t)
	// Virtio devices sit in the MMIO window the program pokes: their
	// transports take the garbage too.
	disk := diskImage(t, 1<<20, false)
	uds := filepath.Join(t.TempDir(), "v.sock")
	r := ember(t, bootLimit, vmArgs("--initrd", initrd, "--timeout", "150s", "--json", "--drive", "path="+disk, "--rng",
		"--net", "mac=06:00:00:00:00:01", "--vsock", "cid=3,uds="+uds, "--", "/bin/hostile")...)
	if bytes.Contains([]byte(r.stderr), []byte("goroutine ")) {
		t.Fatalf("ember crashed:\n%s", r.stderr)
	}
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout+r.stderr, "hostile: done") {
		t.Fatalf("the hostile program did not finish\nstdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	rep := report(t, r)
	if u, _ := rep["unclaimed_accesses"].(float64); u < 60000 {
		t.Fatalf("unclaimed_accesses = %v: the garbage did not reach ember's buses", rep["unclaimed_accesses"])
	}
	dev, _ := rep["devices"].(map[string]any)
	for _, name := range []string{"blk0", "net0", "rng", "vsock", "console"} {
		d, _ := dev[name].(map[string]any)
		if f, _ := d["guest_faults"].(float64); f == 0 {
			t.Errorf("%s counted no guest faults (%v): the garbage did not reach its transport", name, d)
		}
	}
	if t.Failed() {
		t.Fatalf("stdout:\n%s", r.stdout)
	}
}

// TestVMHaltedForGood: a guest that halts every CPU with interrupts off
// (reboot(LINUX_REBOOT_CMD_HALT), what a kernel without ACPI does on
// poweroff) ends as powered off instead of running until the timeout; the
// command reported no status, so the exit status says it did not finish.
func TestVMHaltedForGood(t *testing.T) {
	besideVM(t)
	for _, cpus := range []string{"1", "2"} {
		t.Run("cpus="+cpus, func(t *testing.T) {
			r := ember(t, bootLimit, vmArgs("--initrd", hostileInitrd(t), "--cpus", cpus, "--timeout", "120s", "--json", "--", "/bin/hostile", "halt")...)
			wantCode(t, r, 123)
			rep := report(t, r)
			if rep["outcome"] != "poweroff" || !strings.Contains(fmt.Sprint(rep["reason"]), "halted") {
				t.Fatalf("outcome %v (%v), want poweroff because the vCPUs halted\nstderr:\n%s", rep["outcome"], rep["reason"], r.stderr)
			}
		})
	}
}

// hostileInitrd is ember's initramfs with /bin/hostile added.
func hostileInitrd(t testing.TB) string {
	return initrdWith(t, map[string]string{"hostile": env.hostile}, nil)
}

// initrdWith is ember's cloud-amd64 initramfs with the given programs in
// /bin (name → host path) and extra archives appended.
func initrdWith(t testing.TB, progs map[string]string, extra []byte) string {
	t.Helper()
	return initrdFor(t, "cloud-amd64", progs, extra)
}

// initrdFor is initrdWith for the image of another flavour.
func initrdFor(t testing.TB, flavour string, progs map[string]string, extra []byte) string {
	t.Helper()
	img := image(t, flavour)
	base, err := os.ReadFile(img.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	var recs []cpio.Record
	for name, path := range progs {
		prog, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, cpio.StaticFile("bin/"+name, string(prog), 0o755))
	}
	// The kernel unpacks concatenated archives.
	var more bytes.Buffer
	w := cpio.Newc.Writer(&more)
	if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
		t.Fatal(err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	out := append(pad4(base), more.Bytes()...)
	if extra != nil {
		out = append(pad4(out), extra...)
	}
	initrd := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(initrd, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return initrd
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
