package tests

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Bad user input: each gets one clear line on stderr, exit status 125, no
// panic, and nothing left behind. None of these needs KVM.
func TestInputErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	random := make([]byte, 64<<10)
	rand.Read(random)
	randomKernel := write("random.bin", string(random))
	cloud := image(t, "cloud-amd64")
	bz, err := os.ReadFile(cloud.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	truncated := write("truncated-bzImage", string(bz[:len(bz)/3]))

	cases := []struct {
		name string
		args []string
		want []string // substrings of the one error line
	}{
		{"unknown key", []string{"run", write("unknown.toml", "[machine]\ncpus = 1\ncpu = 2\n")},
			[]string{"unknown.toml:3", "cpu"}},
		{"bad memory", []string{"run", write("mem.toml", "[machine]\nmemory = \"abc\"\n")},
			[]string{"mem.toml", "machine.memory", "abc"}},
		{"zero cpus", []string{"run", write("cpus.toml", "[machine]\ncpus = 0\n")},
			[]string{"cpus.toml", "machine.cpus", "0"}},
		{"bad accel", []string{"run", write("accel.toml", "[machine]\naccel = \"fast\"\n")},
			[]string{"machine.accel", "fast"}},
		{"syntax", []string{"run", write("syntax.toml", "[machine\ncpus = 1\n")},
			[]string{"syntax.toml:1"}},
		{"missing config", []string{"run", filepath.Join(dir, "nope.toml")},
			[]string{"nope.toml"}},
		{"missing kernel file", []string{"run", "--kernel", filepath.Join(dir, "vmlinuz-missing"), "--initrd", "none"},
			[]string{"vmlinuz-missing"}},
		{"missing kernel in config", []string{"run", write("k.toml", "[boot]\nkernel = \"/no/such/kernel\"\ninitrd = \"none\"\n")},
			[]string{"boot.kernel", "/no/such/kernel"}},
		{"missing initrd", []string{"run", "--initrd", filepath.Join(dir, "initrd-missing")},
			[]string{"initrd-missing"}},
		{"bad memory flag", []string{"run", "--memory", "lots"}, []string{"--memory", "lots"}},
		{"zero cpus flag", []string{"run", "--cpus", "0"}, []string{"cpus", "0"}},
		{"bad accel flag", []string{"run", "--accel", "warp"}, []string{"accel", "warp"}},
		{"negative nested stall", []string{"run", "--nested-stall", "-5s"}, []string{"--nested-stall", "-5s"}},
		{"negative nested stall in test", []string{"test", "--nested-stall", "-5s", write("m.toml", "[[target]]\nname = \"a\"\ncommand = [\"true\"]\n")},
			[]string{"--nested-stall", "-5s"}},
		{"unknown flavour", []string{"run", "--kernel", "debian:sparc"}, []string{"sparc"}},
		{"random-bytes kernel", []string{"run", "--kernel", randomKernel, "--initrd", "none"},
			[]string{"random.bin", "not a Linux kernel"}},
		{"truncated bzImage", []string{"run", "--kernel", truncated, "--initrd", "none"},
			[]string{"truncated-bzImage", "truncated"}},
		{"missing drive image", []string{"run", "--drive", "path=" + filepath.Join(dir, "disk-missing.img")},
			[]string{"drive[0].path", "disk-missing.img", "no such file"}},
		{"drive image is a directory", []string{"run", write("d.toml", "[[drive]]\npath = \""+dir+"\"\n")},
			[]string{"d.toml", "drive[0].path", "not a regular file"}},
		{"bad drive flag", []string{"run", "--drive", "path=x.img,speed=fast"}, []string{"--drive", "speed=fast"}},
		{"drive serial too long", []string{"run", "--drive", "path=" + randomKernel + ",id=abcdefghijklmnopqrstuvwxyz"},
			[]string{"drive[0].id", "20"}},
		{"same image twice", []string{"run", "--drive", randomKernel, "--drive", randomKernel + ",ro"},
			[]string{"drive[1].path", "drive[0]"}},
		{"unknown drive key", []string{"run", write("dk.toml", "[[drive]]\npath = \"x.img\"\nsize = 1\n")},
			[]string{"dk.toml:3", "size"}},
		{"vsock reserved cid", []string{"run", "--vsock", "cid=2,uds=" + filepath.Join(dir, "v.sock")}, []string{"vsock.cid", "reserved"}},
		{"vsock socket exists", []string{"run", "--vsock", "cid=3,uds=" + randomKernel}, []string{"vsock.uds", "already exists"}},
		{"vsock bad flag", []string{"run", "--vsock", "cid=three"}, []string{"--vsock", "three"}},
		{"vsock socket exists, nested", []string{"run", "--accel", "nested", "--vsock", "cid=3,uds=" + randomKernel},
			[]string{"vsock", "already exists"}},
		{"missing bridge, nested", []string{"run", "--accel", "nested", "--net", "bridge=no-such-br0"}, []string{"net[0].bridge", "no-such-br0"}},
		{"bad mac", []string{"run", "--net", "tap=embx0,mac=01:00:5e:00:00:01"}, []string{"net[0].mac", "multicast"}},
		{"missing bridge", []string{"run", "--net", "bridge=no-such-br0"}, []string{"net[0].bridge", "no-such-br0"}},
		{"bad net flag", []string{"run", "--net", "tap=a,speed=1G"}, []string{"--net", "speed=1G"}},
		{"missing share", []string{"run", "--share", "/no/such/dir"}, []string{"share[0].path", "/no/such/dir"}},
		{"share of a file", []string{"run", "--share", "/etc/hostname"}, []string{"share[0].path", "not a directory"}},
		{"bad share flag", []string{"run", "--share", "/tmp,rw"}, []string{"--share", `"rw"`}},
		{"share guest path", []string{"run", "--share", "/tmp:relative"}, []string{"share[0].guest", "absolute"}},
		{"tmpfs without host root", []string{"run", "--tmpfs", "~"}, []string{"boot.tmpfs", `rootfs = "host"`}},
		{"tmpfs of a missing directory", []string{"run", "--rootfs", "host", "--tmpfs", "/no/such/dir"}, []string{"boot.tmpfs", "/no/such/dir", "not a directory"}},
		{"bench without runs", []string{"bench", "-n", "0"}, []string{"--runs 0", "at least 1"}},
		{"bench chart into a missing directory", []string{"bench", "--svg", "/no/such/dir/b.svg"}, []string{"--svg", "/no/such/dir", "not a directory"}},
		{"bench kernel missing", []string{"bench", "--kernel", "/no/such/bzImage"}, []string{"--kernel", "/no/such/bzImage"}},
	}
	before := leftovers(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append(append([]string{}, c.args...), "--cache-dir", env.cacheDir)
			r := ember(t, 2*time.Minute, args...)
			if r.code != 125 {
				t.Fatalf("exit status %d, want 125\nstderr:\n%s", r.code, r.stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if len(lines) != 1 {
				t.Fatalf("want one error line, got %d:\n%s", len(lines), r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(lines[0], w) {
					t.Errorf("error %q does not mention %q", lines[0], w)
				}
			}
			if strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "panic:") {
				t.Fatalf("ember panicked:\n%s", r.stderr)
			}
		})
	}
	if after := leftovers(t); after != before {
		t.Fatalf("bad input left files behind in %s: %d entries before, %d after", os.TempDir(), before, after)
	}
}

// leftovers counts ember's temporary files and directories.
func leftovers(t *testing.T) int {
	m, err := filepath.Glob(filepath.Join(os.TempDir(), "ember*"))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}
