package nested

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
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
	a := qemuArgs(o, "/t/initrd", "/t/io", false)
	joined := strings.Join(a, " ")
	for _, want := range []string{
		"-accel tcg,thread=multi", "-cpu max", "-smp 3", "-m 2048", "-nodefaults", "-no-user-config",
		"-display none", "-no-reboot", "-chardev stdio,id=con,signal=off", "-serial chardev:con",
		"-kernel /k/vmlinuz", "-initrd /t/initrd",
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
	if i < 0 || a[i+1] != "console=ttyS0 quiet loglevel=0 panic=-1" {
		t.Errorf("-append: %q", a)
	}
	d := qemuArgs(o, "/t/initrd", "/t/io", true)
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

func TestRunArchive(t *testing.T) {
	want := proto.Run{Args: []string{"/usr/bin/ember", "run", "--", "sh"}, Env: []string{"A=1"}, Dir: "/src",
		Nested: &proto.Nested{RootTag: rootTag, IOTag: ioTag, Mounts: []proto.NestedMount{{Tag: "m0", Path: "/x"}}}}
	b, err := runArchive(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%4 != 0 {
		t.Errorf("archive length %d not a multiple of 4", len(b))
	}
	files := readArchive(t, b)
	name := strings.TrimPrefix(proto.RunFile, "/")
	js, ok := files[name]
	if !ok {
		t.Fatalf("no %s in %v", name, files)
	}
	for _, dir := range []string{"etc", "etc/ember"} {
		if _, ok := files[dir]; !ok {
			t.Errorf("parent directory %s missing", dir)
		}
	}
	var got proto.Run
	if err := json.Unmarshal([]byte(js), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("run file %+v, want %+v", got, want)
	}
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
	tw := &tailWriter{max: 4}
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
	case "$a" in local,path=*,mount_tag=emberio,*) d=${a#local,path=}; d=${d%%,mount_tag=*};; esac
done
echo "L1 console line"
case "$FAKE_MODE" in
ok) sleep 0.1; : > "$d/started"; echo '{"outcome":"exited"}' > "$d/result.json"; echo 42 > "$d/status";;
garbage) echo "forty-two" > "$d/status";;
fail) i=0; while [ $i -lt 30 ]; do echo "boot line $i"; i=$((i+1)); done; echo "Kernel panic - not syncing";;
qemufail) echo "qemu-system-x86_64: -kernel: bad kernel" >&2; exit 1;;
hang) sleep 60;;
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
