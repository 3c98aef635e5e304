package nested

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/vmm/hostio"
	"github.com/u-root/u-root/pkg/cpio"
)

func testOptions(t *testing.T) Options {
	t.Helper()
	dir := t.TempDir()
	k := filepath.Join(dir, "vmlinuz")
	ir := filepath.Join(dir, "l1.cpio")
	if err := os.WriteFile(k, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ir, []byte("BASE-IMAGE"), 0o644); err != nil { // 10 bytes: needs padding
		t.Fatal(err)
	}
	return Options{QEMU: "/bin/false", Kernel: k, Initrd: ir, Args: []string{"/usr/bin/ember", "run"}}
}

func TestQEMUArgs(t *testing.T) {
	o := Options{Kernel: "/k/vmlinuz", CPUs: 3, MemoryMiB: 2048,
		Mounts: []proto.NestedMount{{Tag: "m0", Path: "/srv/a,b", ReadOnly: true}, {Tag: "m1", Path: "/data"}}}
	a := qemuArgs(o, "/t/initrd", "/t/io", "/t/hb", "/t/q,s", false)
	joined := strings.Join(a, " ")
	for _, want := range []string{
		"-accel tcg,thread=multi", "-cpu max", "-smp 3", "-m 2048", "-nodefaults", "-no-user-config",
		"-display none", "-no-reboot", "-chardev stdio,id=con,signal=off", "-serial chardev:con",
		"-chardev file,id=hb,path=/t/hb -device isa-debugcon,iobase=0x4f0,chardev=hb",
		"-kernel /k/vmlinuz", "-initrd /t/initrd", "-qmp unix:/t/q,,s,server=on,wait=off",
		"-virtfs local,path=/,mount_tag=hostroot,security_model=none,multidevs=remap,readonly=on",
		"-virtfs local,path=/t/io,mount_tag=emberio,security_model=none,multidevs=remap -",
		"-virtfs local,path=/srv/a,,b,mount_tag=m0,security_model=none,multidevs=remap,readonly=on",
		"-virtfs local,path=/data,mount_tag=m1,security_model=none,multidevs=remap",
	} {
		if !strings.Contains(joined+" -", want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	i := slices.Index(a, "-append")
	if i < 0 || a[i+1] != "console=ttyS0 quiet loglevel=0 panic=-1 kvm_amd.npt=0 kvm_amd.vgif=0 kvm_amd.vls=0 lapic=notscdeadline highres=off nohz=off nokaslr" {
		t.Errorf("-append: %q", a)
	}
	d := qemuArgs(o, "/t/initrd", "/t/io", "/t/hb", "/t/q,s", true)
	if i := slices.Index(d, "-append"); strings.Contains(d[i+1], "quiet") || !strings.Contains(d[i+1], "loglevel=7") {
		t.Errorf("debug cmdline %q", d[i+1])
	}
	if strings.Contains(joined, "-nographic") || strings.Contains(joined, "-enable-kvm") {
		t.Errorf("unexpected option in %s", joined)
	}
}

func readArchive(t *testing.T, b []byte) map[string]string {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, r := range recs {
		content := ""
		if r.ReaderAt != nil {
			c, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			if err != nil {
				t.Fatal(err)
			}
			content = string(c)
		}
		files[r.Name] = content
	}
	return files
}

func TestBuildInitrd(t *testing.T) {
	o, err := testOptions(t).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initrd")
	if err := buildInitrd(o, out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("BASE-IMAGE\x00\x00")) {
		t.Fatalf("base image not kept and padded: %q", b[:16])
	}
	files := readArchive(t, b[12:])
	var r proto.Run
	if err := json.Unmarshal([]byte(files["etc/ember/run.json"]), &r); err != nil {
		t.Fatal(err)
	}
	if r.Nested == nil || r.Nested.RootTag != rootTag || r.Nested.IOTag != ioTag || r.Args[0] != "/usr/bin/ember" {
		t.Errorf("run file %+v", r)
	}
	if wd, _ := os.Getwd(); r.Dir != wd {
		t.Errorf("dir %q, want the current directory %q", r.Dir, wd)
	}
}

func TestWithDefaults(t *testing.T) {
	o, err := testOptions(t).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.CPUs != 2 || o.MemoryMiB != MinMemoryMiB || o.Stdout == nil || o.Stderr == nil || o.Log == nil || o.Dir == "" {
		t.Errorf("defaults not applied: %+v", o)
	}
	mdir := t.TempDir()
	o2 := testOptions(t)
	o2.MemoryMiB, o2.CPUs = 4096, 1
	o2.Mounts = []proto.NestedMount{{Path: mdir}, {Path: mdir, Tag: "x"}}
	if o2, err = o2.withDefaults(); err != nil {
		t.Fatal(err)
	}
	if o2.MemoryMiB != 4096 || o2.CPUs != 1 || o2.Mounts[0].Tag != "embermnt0" || o2.Mounts[1].Tag != "x" {
		t.Errorf("got %+v", o2)
	}

	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"no kernel", func(o *Options) { o.Kernel = "" }, "kernel and initramfs are required"},
		{"missing kernel", func(o *Options) { o.Kernel = "/nonexistent/vmlinuz" }, "/nonexistent/vmlinuz"},
		{"no args", func(o *Options) { o.Args = nil }, "no command"},
		{"relative mount", func(o *Options) { o.Mounts = []proto.NestedMount{{Path: "rel"}} }, "absolute path"},
		{"missing mount", func(o *Options) { o.Mounts = []proto.NestedMount{{Path: "/nonexistent/dir"}} }, "existing directory"},
		{"reserved tag", func(o *Options) { o.Mounts = []proto.NestedMount{{Path: mdir, Tag: ioTag}} }, "used twice"},
		{"qemu not in PATH", func(o *Options) { o.QEMU = ""; t.Setenv("PATH", t.TempDir()) }, "install Debian package qemu-system-x86"},
	} {
		o := testOptions(t)
		tc.edit(&o)
		if _, err := o.withDefaults(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"0\n", 0, true}, {"7", 7, true}, {" 255 \n", 255, true},
		{"", 0, false}, {"256", 0, false}, {"-1", 0, false}, {"7x", 0, false}, {"99999999999999999999", 0, false},
	} {
		got, err := parseStatus([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseStatus(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("0\n"))
	f.Add([]byte("255"))
	f.Add([]byte("-3"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseStatus(b)
		if err == nil && (n < 0 || n > 255) {
			t.Fatalf("status %d accepted", n)
		}
	})
}

func TestLastLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\r\nb\r\nc\r\n", 2, "b\nc"},
		{"a\nb", 5, "a\nb"},
		{"", 3, ""},
	} {
		if got := lastLines(tc.in, tc.n); got != tc.want {
			t.Errorf("lastLines(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
	tw := &hostio.Tail{Max: 4}
	_, _ = tw.Write([]byte("abc"))
	_, _ = tw.Write([]byte("defg"))
	if tw.String() != "defg" {
		t.Errorf("tail %q", tw.String())
	}
}

// fakeQEMU stands in for QEMU: it finds the IO share among its arguments
// and behaves as $FAKE_MODE says.
const fakeQEMU = `#!/bin/sh
for a in "$@"; do
	case "$a" in
	local,path=*,mount_tag=emberio,*) d=${a#local,path=}; d=${d%%,mount_tag=*};;
	file,id=hb,path=*) hb=${a#file,id=hb,path=};;
	esac
done
echo "L1 console line"
beat() { printf . >> "$hb"; }
case "$FAKE_MODE" in
ok) beat; sleep 0.1; : > "$d/started"; echo '{"outcome":"exited"}' > "$d/result.json"; echo 42 > "$d/status";;
plan) cat "$d/plan.json" > "$d/result.json"; echo 0 > "$d/status";;
alive) i=0; while [ $i -lt 8 ]; do beat; sleep 0.5; i=$((i+1)); done; echo 0 > "$d/status";;
stall) beat; echo "last words before the freeze"; sleep 60;;
noboot) sleep 60;;
fifo) mkfifo "$d/status";;
symlink) ln -s /etc/hostname "$d/status";;
garbage) echo "forty-two" > "$d/status";;
fail) i=0; while [ $i -lt 30 ]; do echo "boot line $i"; i=$((i+1)); done; echo "Kernel panic - not syncing";;
qemufail) echo "qemu-system-x86_64: -kernel: bad kernel" >&2; exit 1;;
hang) sleep 60;;
stallonce) echo boot >> "$TMPDIR/boots"
	if [ "$(wc -l < "$TMPDIR/boots")" -eq 1 ]; then beat; sleep 60; fi
	beat; : > "$d/started"; echo 7 > "$d/status";;
stallstarted) echo boot >> "$TMPDIR/boots"; beat; : > "$d/started"; sleep 60;;
esac
`

func fakeOptions(t *testing.T, mode string) Options {
	t.Helper()
	o := testOptions(t)
	o.QEMU = filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(o.QEMU, []byte(fakeQEMU), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_MODE", mode)
	t.Setenv("TMPDIR", t.TempDir())
	return o
}

// noTempLeft checks Run removed its temporary directory.
func noTempLeft(t *testing.T) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(os.Getenv("TMPDIR"), "ember-nested-*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestRunFake(t *testing.T) {
	o := fakeOptions(t, "ok")
	var out bytes.Buffer
	o.Stdout = &out
	res, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitStatus != 42 || string(res.ResultJSON) != "{\"outcome\":\"exited\"}\n" {
		t.Errorf("result %+v (%s)", res, res.ResultJSON)
	}
	if res.L1Boot <= 0 || res.L1Boot > res.Wall+50*time.Millisecond {
		t.Errorf("L1 boot %v, wall %v", res.L1Boot, res.Wall)
	}
	if !strings.Contains(out.String(), "L1 console line") {
		t.Errorf("console output not passed on: %q", out.String())
	}
	noTempLeft(t)
}

func TestRunFakeFailures(t *testing.T) {
	for _, tc := range []struct {
		mode string
		want []string
		l1   bool
	}{
		{"fail", []string{"ended without reporting", "Kernel panic", "boot line 29", "boot line 11"}, true},
		{"qemufail", []string{"QEMU: exit status 1", "bad kernel"}, true},
		{"garbage", []string{`"forty-two" is not an exit status`}, false},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			res, err := Run(context.Background(), fakeOptions(t, tc.mode))
			if err == nil {
				t.Fatalf("no error, result %+v", res)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "boot line 9\n") {
				t.Errorf("error shows more than %d lines:\n%v", tailLines, err)
			}
			if errors.Is(err, ErrL1Failed) != tc.l1 {
				t.Errorf("errors.Is(ErrL1Failed) = %v, want %v", !tc.l1, tc.l1)
			}
			noTempLeft(t)
		})
	}
}

func TestRunIOFiles(t *testing.T) {
	o := fakeOptions(t, "plan")
	o.IOFiles = map[string][]byte{"plan.json": []byte(`{"cpus":3}`)}
	res, err := Run(context.Background(), o)
	if err != nil || string(res.ResultJSON) != `{"cpus":3}` {
		t.Fatalf("Run = %+v, %v; the command did not see the IO file", res, err)
	}
}

// TestRunStuck: an L1 that stops beating (a frozen QEMU, a locked-up
// kernel) is killed after the stall bound, with an error that says so and
// shows its last console lines; an L1 that beats slowly is left alone.
func TestRunStuck(t *testing.T) {
	for _, tc := range []struct {
		mode string
		want []string
	}{
		{"stall", []string{"no heartbeat for", "last words before the freeze"}},
		{"noboot", []string{"no sign of life 2s after it was started"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			o := fakeOptions(t, tc.mode)
			o.Stall, o.BootLimit = 2*time.Second, 2*time.Second
			start := time.Now()
			_, err := Run(context.Background(), o)
			if !errors.Is(err, ErrL1Stuck) {
				t.Fatalf("err = %v, want ErrL1Stuck", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %s to notice", d)
			}
			noTempLeft(t)
		})
	}
	o := fakeOptions(t, "alive")
	o.Stall, o.BootLimit = 2*time.Second, 2*time.Second
	if res, err := Run(context.Background(), o); err != nil || res.ExitStatus != 0 {
		t.Fatalf("a slow but living L1 was not left alone: %+v, %v", res, err)
	}
}

// TestRunRetriesBootLockup: an L1 that locks up before the command starts
// is booted again, once; one that locks up later, or one that may have
// taken input, is not.
func TestRunRetriesBootLockup(t *testing.T) {
	boots := func(t *testing.T) int {
		b, _ := os.ReadFile(filepath.Join(os.Getenv("TMPDIR"), "boots"))
		return strings.Count(string(b), "\n")
	}
	t.Run("before", func(t *testing.T) {
		o := fakeOptions(t, "stallonce")
		o.Stall = time.Second
		res, err := Run(context.Background(), o)
		if err != nil || res.ExitStatus != 7 {
			t.Fatalf("Run = %+v, %v; want the second L1's status 7", res, err)
		}
		if n := boots(t); n != 2 {
			t.Errorf("%d boots, want 2", n)
		}
		noTempLeft(t)
	})
	for _, tc := range []struct {
		name, mode string
		stdin      bool
	}{
		{"after start", "stallstarted", false},
		{"with input", "stallonce", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := fakeOptions(t, tc.mode)
			o.Stall = time.Second
			if tc.stdin {
				o.Stdio = &Stdio{Stdin: strings.NewReader("input"), Stdout: io.Discard, Stderr: io.Discard}
			}
			if _, err := Run(context.Background(), o); !errors.Is(err, ErrL1Stuck) {
				t.Fatalf("err = %v, want ErrL1Stuck", err)
			}
			if n := boots(t); n != 1 {
				t.Errorf("%d boots, want 1", n)
			}
		})
	}
}

// TestRunHostileStatusFile: L1 controls the IO share. A FIFO in place of
// the status file must not hang ember, and a symlink must not make it read
// (and print) a host file.
func TestRunHostileStatusFile(t *testing.T) {
	host, _ := os.ReadFile("/etc/hostname")
	for _, mode := range []string{"fifo", "symlink"} {
		t.Run(mode, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := Run(context.Background(), fakeOptions(t, mode))
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("accepted")
				}
				if len(bytes.TrimSpace(host)) > 0 && strings.Contains(err.Error(), strings.TrimSpace(string(host))) {
					t.Fatalf("error shows the host file's content: %v", err)
				}
				if !strings.Contains(err.Error(), "not a regular file") && !strings.Contains(err.Error(), "symbolic link") {
					t.Fatalf("error %v does not say what was wrong", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("hung reading the status file")
			}
		})
	}
}

func TestReadLimited(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, maxResultSize+1); err != nil {
		t.Fatal(err)
	}
	if _, err := readLimited(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized file: %v", err)
	}
	ok := filepath.Join(dir, "ok")
	os.WriteFile(ok, []byte("7\n"), 0o644)
	if b, err := readLimited(ok); err != nil || string(b) != "7\n" {
		t.Fatalf("regular file: %q %v", b, err)
	}
	if _, err := readLimited(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestRunCancel(t *testing.T) {
	o := fakeOptions(t, "hang")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, o)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v: QEMU's group not killed", d)
	}
	noTempLeft(t)
}

// TestFilesUnderTmpShared: a kernel under /tmp named only in a plan file
// is still visible in L1 (its directory is shared read-only).
func TestFilesUnderTmpShared(t *testing.T) {
	o := testOptions(t)
	k := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(k, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	o.Files = []string{k, ""}
	o, err := o.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range o.Mounts {
		if m.Path == filepath.Dir(k) && m.ReadOnly {
			return
		}
	}
	t.Fatalf("mounts %+v do not share %s", o.Mounts, filepath.Dir(k))
}

func TestOverlaidPathsShared(t *testing.T) {
	dir := t.TempDir() // under /tmp, which L1 covers with a tmpfs
	sub := dir + "/bin"
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	got := overlaidPaths(nil, dir, sub, "/usr/bin", dir)
	if len(got) != 1 || got[0].Path != dir || !got[0].ReadOnly || got[0].Tag == "" {
		t.Fatalf("overlaidPaths = %+v, want one read-only share of %s", got, dir)
	}
	if got := overlaidPaths([]proto.NestedMount{{Path: dir}}, sub); len(got) != 0 {
		t.Fatalf("a path under an existing share was shared again: %+v", got)
	}
}

func TestSweepTemp(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	dead := filepath.Join(os.TempDir(), tempPrefix+"999999999-x")
	live := filepath.Join(os.TempDir(), tempPrefix+strconv.Itoa(os.Getpid())+"-y")
	for _, d := range []string{dead, live} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sweepTemp()
	if _, err := os.Stat(dead); err == nil {
		t.Error("a dead ember's directory was kept")
	}
	if _, err := os.Stat(live); err != nil {
		t.Error("a live ember's directory was removed")
	}
}

// TestMountOrder: a read-write share inside a directory that is itself
// shared (the working directory under /tmp, say) is mounted after it, so
// it is not hidden.
func TestMountOrder(t *testing.T) {
	o := testOptions(t)
	dir := t.TempDir()
	inner := filepath.Join(dir, "images")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	o.Dir = dir
	o.Mounts = []proto.NestedMount{{Path: inner}}
	o, err := o.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	outer, in := -1, -1
	for i, m := range o.Mounts {
		switch m.Path {
		case dir:
			outer = i
		case inner:
			in = i
		}
	}
	if outer < 0 || in < 0 || outer > in {
		t.Fatalf("mounts %+v: want %s before %s", o.Mounts, dir, inner)
	}
}
