package tests

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVMRootfsHost: --rootfs host runs the host's programs in the guest,
// in the caller's directory (writable, on the host), with the caller's
// environment, the guest's own /proc and a read-only rest.
func TestVMRootfsHost(t *testing.T) {
	besideVM(t)
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "from-host"), []byte("host data\n"), 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.ember, append(vmArgs("--rootfs", "host", "--"),
		"/bin/sh", "-c", `pwd; cat from-host; echo "$EMBER_TEST_VAR"; cat /proc/1/comm; id -u; head -1 /etc/os-release; perl -e 'print 1+1, "\n"'; echo out > from-guest; if touch /usr/ember-x 2>/dev/null; then echo USR-WRITABLE; else echo usr-read-only; fi`)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "EMBER_TEST_VAR=carried-over", "SSH_AUTH_SOCK=/nowhere")
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ember: %v\nstdout:\n%s", err, out)
	}
	osRelease, _ := os.ReadFile("/etc/os-release")
	first, _, _ := strings.Cut(string(osRelease), "\n")
	// perl (Debian's perl-base) is a host program with shared libraries.
	want := dir + "\nhost data\ncarried-over\ninit\n0\n" + first + "\n2\nusr-read-only\n"
	if string(out) != want {
		t.Fatalf("stdout %q, want %q", out, want)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "from-guest")); string(b) != "out\n" {
		t.Fatalf("the guest's file is not in the host directory: %q", b)
	}
}

// TestNestedGoTestExec: go test -exec 'ember run --rootfs host --' runs
// this project's configs tests and a standard library package each in a
// VM (ember's result file shows the boot) and reports like a local run.
func TestNestedGoTestExec(t *testing.T) {
	needNested(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	result := filepath.Join(t.TempDir(), "result.json")
	ctx, cancel := context.WithTimeout(context.Background(), 2*nestedLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-exec",
		env.ember+" run --accel nested --cache-dir "+env.cacheDir+" --result-file "+result+" --rootfs host --",
		"./configs/", "unicode/utf8")
	cmd.Dir = root
	cmd.WaitDelay = 10 * time.Second
	b, err := cmd.CombinedOutput()
	got := string(b)
	if err != nil || !strings.Contains(got, "ok  \tgithub.com/ember-vmm/ember/configs") || !strings.Contains(got, "ok  \tunicode/utf8") {
		t.Fatalf("go test -exec: %v\n%s", err, got)
	}
	// The last test binary's VM reports a boot.
	var rep struct {
		Accel   string  `json:"accel"`
		Outcome string  `json:"outcome"`
		BootMS  float64 `json:"boot_ms"`
	}
	b, _ = os.ReadFile(result)
	if err := json.Unmarshal(b, &rep); err != nil || rep.Accel != "nested" || rep.Outcome != "exited" || rep.BootMS <= 0 {
		t.Fatalf("the test binaries did not run in a VM (result %s: %v)", b, err)
	}
}

// TestVMRootfsHostTmpfs: --tmpfs ~ covers the caller's home with an empty
// writable tmpfs; a file named on the command line stays visible under
// it, and nothing written there reaches the host.
func TestVMRootfsHostTmpfs(t *testing.T) {
	besideVM(t)
	// A host directory with content that is not under the guest's own
	// tmpfs (/tmp, /run, /var/tmp): the home of this run.
	home := "/usr/share/doc"
	named, _ := filepath.Glob(home + "/*/copyright")
	if len(named) < 2 {
		t.Skipf("SKIP: %s has too few packages' copyright files to test with", home)
	}
	want, err := os.ReadFile(named[0])
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Dir(named[1])
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.ember, append(vmArgs("--rootfs", "host", "--tmpfs", "~", "--"),
		"/bin/sh", "-c", `head -c 64 "$1"; echo; if [ -e "$HOME/$2" ]; then echo HOST-HOME-VISIBLE; else echo host-home-hidden; fi; echo guest > "$HOME/from-guest" && cat "$HOME/from-guest"`,
		// other by name only: a directory named by its path on the
		// command line would be shared.
		"sh", named[0], filepath.Base(other))...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+home)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ember: %v\nstdout:\n%s", err, out)
	}
	if len(want) > 64 {
		want = want[:64]
	}
	if w := string(want) + "\nhost-home-hidden\nguest\n"; string(out) != w {
		t.Fatalf("stdout %q, want %q", out, w)
	}
	if _, err := os.Stat(home + "/from-guest"); err == nil {
		t.Fatal("the guest's write to its tmpfs home reached the host")
	}
}
