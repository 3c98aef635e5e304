package tests

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
)

// TestVMStdio: on both kernels, the command's stdout and stderr come out
// separately and byte for byte (no CR added, no kernel message in stdout),
// kernel messages arrive on stderr marked "console: ", and random bytes
// pass from ember's stdin through the guest's cat to ember's stdout
// unchanged: 50 MiB, on the cloud kernel.
func TestVMStdio(t *testing.T) {
	needVM(t)
	for _, c := range []struct {
		flavour string
		mib     int
	}{{"cloud-amd64", 50}, {"amd64", 0}} {
		t.Run(c.flavour, func(t *testing.T) {
			stdioChecks(t, bootLimit, c.mib, vmArgs("--kernel", "debian:"+c.flavour, "--cpus", "2")...)
		})
	}
}

// consoleLine is one line of the serial console on ember's stderr.
var consoleLine = regexp.MustCompile(`console: [^\n]*\n`)

// stdioChecks runs ember with args: a command writing to both streams,
// then mib MiB through cat (none for 0).
func stdioChecks(t *testing.T, limit time.Duration, mib int, args ...string) {
	t.Helper()
	r := ember(t, limit, append(args, "--cmdline", "loglevel=4", "--", "sh", "-c",
		`printf 'out\n\000\r\n'; echo err >&2; echo reopened > /dev/stdout; echo '<1>marker' > /dev/kmsg; exit 3`)...)
	wantCode(t, r, 3)
	if want := "out\n\x00\r\nreopened\n"; r.stdout != want {
		t.Fatalf("stdout %q, want exactly %q\nstderr:\n%s", r.stdout, want, r.stderr)
	}
	// Kernel lines and the command's stderr share ember's stderr, and a
	// kernel line may land between two of the command's writes ("err",
	// "\n"): without the kernel's lines, the command's bytes are intact.
	if cmdErr := consoleLine.ReplaceAllString(r.stderr, ""); !strings.Contains(cmdErr, "err\n") || strings.Contains(r.stderr, "console: err") {
		t.Fatalf("the command's stderr is not on ember's stderr as it is:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "console: ") || !strings.Contains(r.stderr, "marker") {
		t.Fatalf("the kernel's message is not on stderr marked console:\n%s", r.stderr)
	}

	if mib == 0 {
		return
	}
	payload := make([]byte, mib<<20)
	_, _ = rand.Read(payload)
	big := emberIn(t, limit, payload, append(args, "--", "cat")...)
	if big.code != 0 {
		t.Fatalf("cat of %d MiB: exit status %d after %d bytes out\nstderr:\n%s", mib, big.code, len(big.stdout), big.stderr)
	}
	if got, want := sha256.Sum256([]byte(big.stdout)), sha256.Sum256(payload); got != want {
		t.Fatalf("stdout: %d bytes, checksum differs from the %d bytes sent\nstderr:\n%s", len(big.stdout), len(payload), big.stderr)
	}
	t.Logf("%d MiB through the guest's cat in %s", mib, big.elapsed.Round(time.Millisecond))
}

// TestVMKernelTree: --kernel takes a kernel build tree (its bzImage).
// With an image that loads no modules (as ember's image for a kernel of
// one's own), the guest has no virtio-console driver: the command runs on
// the serial console, which ember then passes on as stdout, after saying
// so on stderr.
func TestVMKernelTree(t *testing.T) {
	besideVM(t)
	tree := t.TempDir()
	if err := os.MkdirAll(filepath.Join(tree, "arch/x86/boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := image(t, "cloud-amd64")
	if err := os.Symlink(img.Kernel, filepath.Join(tree, "arch/x86/boot/bzImage")); err != nil {
		t.Fatal(err)
	}
	// ember's image with an empty module list: like an image for a kernel
	// of one's own, it loads no virtio driver.
	var noMods bytes.Buffer
	w := cpio.Newc.Writer(&noMods)
	if err := cpio.WriteRecordsAndDirs(w, []cpio.Record{cpio.StaticFile("etc/ember/modules", "", 0o644)}); err != nil {
		t.Fatal(err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	initrd := initrdWith(t, nil, noMods.Bytes())
	r := ember(t, bootLimit, vmArgs("--kernel", tree, "--initrd", initrd, "--", "sh", "-c", "uname -r; exit 7")...)
	wantCode(t, r, 7)
	wantOut(t, r, img.Version)
	if !strings.Contains(r.stderr, "no virtio_console driver") {
		t.Fatalf("stderr does not say why the command is on the console:\n%s", r.stderr)
	}
}

// TestNestedKernelTreeModules: with ember's default image, --kernel TREE
// takes the modules the image needs from the tree (modules.order, the
// modules' own dependencies): the guest gets its virtio drivers, so the
// command's output comes back over virtio-console and a drive shows up.
// Nested, because the image is built in the cache, which is read-only
// inside L1.
func TestNestedKernelTreeModules(t *testing.T) {
	needNested(t)
	img := image(t, "cloud-amd64")
	tree := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(tree, "arch/x86/boot"), 0o755))
	must(t, os.Symlink(img.Kernel, filepath.Join(tree, "arch/x86/boot/bzImage")))
	must(t, os.MkdirAll(filepath.Join(tree, "include/config"), 0o755))
	must(t, os.WriteFile(filepath.Join(tree, "include/config/kernel.release"), []byte(img.Version+"\n"), 0o644))
	// The tree's modules: those of the packaged kernel ember keeps, laid
	// out as a build leaves them (drivers/…/x.ko, listed as x.o).
	mods := filepath.Join(filepath.Dir(img.Kernel), "lib/modules", img.Version)
	var order strings.Builder
	err := filepath.WalkDir(filepath.Join(mods, "kernel"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return err
		}
		rel, _ := filepath.Rel(filepath.Join(mods, "kernel"), p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		must(t, os.MkdirAll(filepath.Join(tree, filepath.Dir(rel)), 0o755))
		fmt.Fprintf(&order, "%s.o\n", strings.TrimSuffix(rel, ".ko"))
		return os.WriteFile(filepath.Join(tree, rel), b, 0o644)
	})
	must(t, err)
	must(t, os.WriteFile(filepath.Join(tree, "modules.order"), []byte(order.String()), 0o644))
	disk := diskImage(t, 8<<20, false)
	r := ember(t, nestedLimit, "run", "--accel", "nested", "--cache-dir", env.cacheDir, "--kernel", tree, "--drive", "path="+disk, "--", "sh", "-c", "uname -r; cat /sys/block/vda/size; exit 7")
	wantCode(t, r, 7)
	wantOut(t, r, img.Version+"\n16384\n")
	if strings.Contains(r.stderr, "no virtio_console driver") {
		t.Fatalf("the tree's virtio_console module was not loaded:\n%s", r.stderr)
	}
}
