package main

import (
	"bytes"
	"errors"
	"os/exec"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

func TestExitStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		ws   unix.WaitStatus
		want int
	}{
		{"exit 0", 0, 0},
		{"exit 7", 7 << 8, 7},
		{"exit 255", 255 << 8, 255},
		{"SIGKILL", unix.WaitStatus(syscall.SIGKILL), 128 + 9},
		{"SIGTERM with core", unix.WaitStatus(syscall.SIGSEGV) | 0x80, 128 + 11},
		{"stopped (not waited for)", 0x137f, proto.StatusInitFailed},
	} {
		if got := exitStatus(tc.ws); got != tc.want {
			t.Errorf("%s: exitStatus(%#x) = %d, want %d", tc.name, uint32(tc.ws), got, tc.want)
		}
	}
}

// TestExitStatusReal checks the mapping against statuses the kernel made.
func TestExitStatusReal(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   int
	}{
		{"exit 3", 3},
		{"kill -TERM $$", 128 + 15},
	} {
		cmd := exec.Command("/bin/sh", "-c", tc.script)
		if err := cmd.Start(); err != nil {
			t.Skipf("no /bin/sh: %v", err)
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(cmd.Process.Pid, &ws, 0, nil); err != nil {
			t.Fatal(err)
		}
		if got := exitStatus(ws); got != tc.want {
			t.Errorf("%q: status %d, want %d", tc.script, got, tc.want)
		}
	}
}

func TestParseModuleList(t *testing.T) {
	in := "/lib/modules/v/kernel/a.ko\n\n  # comment\n/lib/modules/v/kernel/b.ko  \r\n/c.ko"
	got, err := parseModuleList(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/modules/v/kernel/a.ko", "/lib/modules/v/kernel/b.ko", "/c.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestParseRun(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     *proto.Run
		err      string
	}{
		{"command", `{"args":["sh","-c","exit 3"],"env":["A=1"],"dir":"/tmp"}`,
			&proto.Run{Args: []string{"sh", "-c", "exit 3"}, Env: []string{"A=1"}, Dir: "/tmp"}, ""},
		{"shell", `{"shell":"gosh"}`, &proto.Run{Shell: "gosh"}, ""},
		{"empty object", `{}`, &proto.Run{}, ""},
		{"nested", `{"args":["/e"],"nested":{"root_tag":"r","io_tag":"i","mounts":[{"tag":"m0","path":"/x","read_only":true}]}}`,
			&proto.Run{Args: []string{"/e"}, Nested: &proto.Nested{RootTag: "r", IOTag: "i",
				Mounts: []proto.NestedMount{{Tag: "m0", Path: "/x", ReadOnly: true}}}}, ""},
		{"not json", `args: [sh]`, nil, "bad run file"},
		{"wrong type", `{"args":"sh"}`, nil, "bad run file"},
		{"bad env", `{"env":["NOEQUALS"]}`, nil, `env entry "NOEQUALS"`},
		{"empty env key", `{"env":["=x"]}`, nil, `env entry "=x"`},
		{"nested without tags", `{"nested":{}}`, nil, "root_tag and io_tag"},
		{"nested relative mount", `{"nested":{"root_tag":"r","io_tag":"i","mounts":[{"tag":"t","path":"rel"}]}}`, nil, "absolute path"},
	} {
		got, err := parseRun([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want one containing %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestCommandArgs(t *testing.T) {
	have := func(names ...string) func(string) (string, error) {
		return func(n string) (string, error) {
			for _, h := range names {
				if h == n {
					return "/bin/" + n, nil
				}
			}
			return "", errors.New("not found")
		}
	}
	for _, tc := range []struct {
		name string
		r    proto.Run
		look func(string) (string, error)
		want []string
	}{
		{"command", proto.Run{Args: []string{"ls", "-l"}, Shell: "x"}, have(), []string{"ls", "-l"}},
		{"chosen shell", proto.Run{Shell: "bash"}, have("gosh"), []string{"bash"}},
		{"gosh", proto.Run{}, have("gosh", "sh"), []string{"gosh"}},
		{"sh fallback", proto.Run{}, have("sh"), []string{"sh"}},
	} {
		if got := commandArgs(&tc.r, tc.look); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestWriteInfo(t *testing.T) {
	var b bytes.Buffer
	if err := writeInfo(&b, facts{kernel: "6.1.0-56-cloud-amd64", cpus: 2, memMiB: 481, bootMS: 312}); err != nil {
		t.Fatal(err)
	}
	want := "kernel: 6.1.0-56-cloud-amd64\ncpus: 2\nmemory: 481 MiB\nboot: 312 ms to init\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	_ = writeInfo(&b, facts{})
	if !strings.HasPrefix(b.String(), "kernel: unknown\n") {
		t.Fatalf("unknown kernel: got %q", b.String())
	}
}

func TestCountCPUList(t *testing.T) {
	for in, want := range map[string]int{
		"0\n": 1, "0-3": 4, "0-3,6": 5, "0,2,4-5\n": 4, "": 0, "x": 0, "3-1": 0, "0-": 0, "-1": 0,
		"0-99999999999": 0,
	} {
		if got := countCPUList(in); got != want {
			t.Errorf("countCPUList(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestMemTotalKB(t *testing.T) {
	for in, want := range map[string]int{
		"MemTotal:         492876 kB\nMemFree: 1 kB\n": 492876,
		"MemFree: 1 kB\nMemTotal: 2048 kB":             2048,
		"MemTotal: lots":                               0,
		"":                                             0,
	} {
		if got := memTotalKB(in); got != want {
			t.Errorf("memTotalKB(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestUptimeMS(t *testing.T) {
	for in, want := range map[string]int64{
		"12.34 5.67\n": 12340, "0.50 0.1": 500, "": 0, "abc 1": 0, "-1 2": 0, "NaN 1": 0, "1e300 0": 0,
	} {
		if got := uptimeMS(in); got != want {
			t.Errorf("uptimeMS(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestNestedMounts(t *testing.T) {
	ms := nestedMounts(&proto.Nested{RootTag: "root", IOTag: "io",
		Mounts: []proto.NestedMount{{Tag: "m0", Path: "/srv/cache/", ReadOnly: true}, {Tag: "m1", Path: "/data"}}})
	byDst := map[string]mnt{}
	for i, m := range ms {
		if i > 0 && !strings.HasPrefix(m.dst, nestedRoot+"/") {
			t.Errorf("mount %d at %s: outside %s", i, m.dst, nestedRoot)
		}
		byDst[m.dst] = m
	}
	if ms[0].dst != nestedRoot || ms[0].src != "root" || ms[0].flags&unix.MS_RDONLY == 0 || !strings.Contains(ms[0].data, "cache=loose") {
		t.Errorf("root mount first and read-only: %+v", ms[0])
	}
	io, ok := byDst[nestedRoot+proto.IOMount]
	if !ok || io.src != "io" || io.flags&unix.MS_RDONLY != 0 || strings.Contains(io.data, "cache=") {
		t.Errorf("IO share: %+v (found %v)", io, ok)
	}
	// The tmpfs over /run must come before the IO share inside it.
	var runAt, ioAt int
	for i, m := range ms {
		switch m.dst {
		case nestedRoot + "/run":
			runAt = i
		case nestedRoot + proto.IOMount:
			ioAt = i
		}
	}
	if runAt == 0 || runAt > ioAt {
		t.Errorf("/run tmpfs at %d, IO share at %d", runAt, ioAt)
	}
	if m := byDst[nestedRoot+"/srv/cache"]; m.src != "m0" || m.flags&unix.MS_RDONLY == 0 {
		t.Errorf("read-only extra mount: %+v", m)
	}
	if m := byDst[nestedRoot+"/data"]; m.src != "m1" || m.flags&unix.MS_RDONLY != 0 {
		t.Errorf("read-write extra mount: %+v", m)
	}
	for _, m := range ms {
		if m.fstype == "9p" && !strings.Contains(m.data, "trans=virtio,version=9p2000.L,msize=512000") {
			t.Errorf("9p mount %s options %q", m.dst, m.data)
		}
	}
}

func FuzzParseRun(f *testing.F) {
	f.Add([]byte(`{"args":["sh","-c","exit 3"],"env":["A=1"]}`))
	f.Add([]byte(`{"nested":{"root_tag":"r","io_tag":"i","mounts":[{"tag":"t","path":"/p"}]}}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRun(b)
		if err == nil && r == nil {
			t.Fatal("nil run without error")
		}
		if err == nil && r.Nested != nil {
			_ = nestedMounts(r.Nested)
		}
	})
}

func FuzzParseModuleList(f *testing.F) {
	f.Add("/a.ko\n#x\n\n/b.ko")
	f.Fuzz(func(t *testing.T, s string) {
		got, _ := parseModuleList(strings.NewReader(s))
		for _, l := range got {
			if l == "" || strings.HasPrefix(l, "#") || strings.TrimSpace(l) != l {
				t.Fatalf("bad entry %q", l)
			}
		}
	})
}

func FuzzProcParsers(f *testing.F) {
	f.Add("0-3,6\n")
	f.Add("MemTotal: 1024 kB\n")
	f.Add("12.5 3.0\n")
	f.Fuzz(func(t *testing.T, s string) {
		if countCPUList(s) < 0 || memTotalKB(s) < 0 || uptimeMS(s) < 0 {
			t.Fatalf("negative result for %q", s)
		}
	})
}

// Modules get their parameters from the kernel command line, as modprobe
// gives them; the kernel itself applies them only to built-in code.
func TestModuleParams(t *testing.T) {
	words := cmdlineWords("console=ttyS0 kvm_amd.npt=0 kvm.ignore_msrs=1 kvm-amd.vgif=0 virtio_blk.x=\"a b\" kvm_amd. quiet\n")
	for path, want := range map[string]string{
		"/lib/modules/6.1/kernel/arch/x86/kvm/kvm-amd.ko":     "npt=0 vgif=0",
		"/lib/modules/6.1/kernel/arch/x86/kvm/kvm.ko.xz":      "ignore_msrs=1",
		"/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko": `x="a b"`,
		"/lib/modules/6.1/kernel/fs/9p/9p.ko":                 "",
	} {
		if got := moduleParams(words, path); got != want {
			t.Errorf("moduleParams(%s) = %q, want %q", path, got, want)
		}
	}
}
