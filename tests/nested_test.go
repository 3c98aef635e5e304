package tests

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ember-vmm/ember/vmm/nested"
)

const nestedLimit = 5 * time.Minute

func needNested(t *testing.T) {
	t.Helper()
	if env.inside {
		t.Skip("already inside the L1 guest")
	}
	if err := nested.Check(); err != nil {
		if env.skip != "" {
			t.Skipf("SKIP: %v", err)
		}
		t.Fatalf("nested path unavailable: %v", err)
	}
}

// TestNestedAccel boots a guest through --accel nested from this host: the
// path a CI runner without /dev/kvm takes.
func TestNestedAccel(t *testing.T) {
	needNested(t)
	r := ember(t, nestedLimit, "run", "--accel", "nested", "--json", "--cache-dir", env.cacheDir,
		"--", "sh", "-c", "ember-info; exit 42")
	wantCode(t, r, 42)
	wantOut(t, r, "kernel: "+image(t, "cloud-amd64").Version)
	rep := report(t, r)
	if rep["accel"] != "nested" || rep["outcome"] != "exited" {
		t.Fatalf("report accel=%v outcome=%v, want nested exited", rep["accel"], rep["outcome"])
	}
}

// TestNestedInteractiveShell: the same terminal session as on KVM, with
// the inner ember inside L1: the size and its changes cross both VMs.
func TestNestedInteractiveShell(t *testing.T) {
	needNested(t)
	interactiveSession(t, nestedLimit, "run", "--accel", "nested", "--cache-dir", env.cacheDir)
}

// TestNestedFrozenL1: an L1 guest that stops (here its QEMU is sent
// SIGSTOP, as a wedged emulator or a locked-up L1 kernel would look) is
// noticed within the stall bound, killed, and reported with exit status
// 122 and a message saying so.
func TestNestedFrozenL1(t *testing.T) {
	needNested(t)
	// The freeze under test comes after the guest is ready. With a bound
	// of 15s a busy host can make L1 miss it while booting; that attempt
	// is run once more, as the other nested tests do.
	var cmd *exec.Cmd
	var stderr *syncBuffer
	var lines chan string
	var waited chan error
	for attempt := 1; ; attempt++ {
		var ready bool
		cmd, stderr, lines, waited, ready = startUntilReady(t)
		if ready {
			break
		}
		if attempt < 2 && strings.Contains(stderr.String(), "stopped responding") {
			t.Logf("RETRY: L1 stalled before the guest was ready; once more\nstderr:\n%s", stderr.String())
			continue
		}
		t.Fatalf("ember ended before the guest was ready\nstderr:\n%s", stderr.String())
	}
	defer cmd.Process.Kill()
	qemu := childNamed(t, cmd.Process.Pid, "qemu-system")
	if err := syscall.Kill(qemu, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	go func() {
		for range lines {
		}
	}()
	select {
	case <-waited:
	case <-time.After(2 * time.Minute):
		syscall.Kill(qemu, syscall.SIGKILL)
		t.Fatalf("ember still waiting 2 minutes after its L1 froze\nstderr:\n%s", stderr.String())
	}
	took := time.Since(stopped)
	if code := cmd.ProcessState.ExitCode(); code != 122 {
		t.Fatalf("exit status %d, want 122\nstderr:\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stopped responding") || !strings.Contains(stderr.String(), "no heartbeat") {
		t.Fatalf("stderr does not say what happened:\n%s", stderr.String())
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(qemu)); err == nil {
		if st, _ := os.ReadFile("/proc/" + strconv.Itoa(qemu) + "/stat"); !strings.Contains(string(st), ") Z ") {
			t.Fatalf("the frozen QEMU (pid %d) was left running", qemu)
		}
	}
	t.Logf("frozen L1 reported %s after SIGSTOP (stall bound 15s)", took.Round(time.Second))
}

// startUntilReady starts an ember whose guest says GUEST-READY and then
// sleeps, and waits for that line; ready is false if ember ended first.
func startUntilReady(t *testing.T) (cmd *exec.Cmd, stderr *syncBuffer, lines chan string, waited chan error, ready bool) {
	t.Helper()
	cmd = exec.Command(env.ember, "run", "--accel", "nested", "--nested-stall", "15s", "--json",
		"--cache-dir", env.cacheDir, "--", "sh", "-c", "echo GUEST-READY; sleep 600")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr = &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited = make(chan error, 1)
	lines = make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		waited <- cmd.Wait()
	}()
	limit := time.After(nestedLimit)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				<-waited
				return cmd, stderr, lines, waited, false
			}
			if strings.Contains(l, "GUEST-READY") {
				return cmd, stderr, lines, waited, true
			}
		case <-limit:
			cmd.Process.Kill()
			t.Fatalf("guest not ready after %s\nstderr:\n%s", nestedLimit, stderr.String())
		}
	}
}

// childNamed finds the child of pid whose command name starts with name.
func childNamed(t *testing.T, pid int, name string) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		procs, _ := filepath.Glob("/proc/[0-9]*/stat")
		for _, p := range procs {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			// pid (comm) state ppid ...
			s := string(b)
			open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
			if open < 0 || close < open {
				continue
			}
			f := strings.Fields(s[close+1:])
			if len(f) < 2 || f[1] != strconv.Itoa(pid) || !strings.HasPrefix(s[open+1:close], name) {
				continue
			}
			c, _ := strconv.Atoi(strings.TrimSpace(s[:open]))
			return c
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no child %s of %d", name, pid)
	return 0
}

// TestNestedDrives: drive images on the host reach the VM that runs in
// L1; the guest's writes land in the host's file and the read-only drive
// stays read-only.
func TestNestedDrives(t *testing.T) {
	needNested(t)
	disk := diskImage(t, 32<<20, true)
	ro := diskImage(t, 1<<20, false)
	r := ember(t, nestedLimit, "run", "--accel", "nested", "--json", "--cache-dir", env.cacheDir,
		"--drive", "path="+disk, "--drive", "path="+ro+",ro", "--rng", "--", "sh", "-c",
		"mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo through-l1 > /mnt/f && umount /mnt && cat /sys/block/vdb/ro && dd if=/dev/hwrng bs=16 count=1 2>/dev/null | wc -c")
	wantCode(t, r, 0)
	out, err := exec.Command("debugfs", "-R", "cat /f", disk).Output()
	if err != nil || !strings.Contains(string(out), "through-l1") {
		t.Fatalf("host image lacks the guest's file: %v %q\nstdout:\n%s", err, out, r.stdout)
	}
	if !strings.Contains(r.stdout, "1\n") {
		t.Fatalf("vdb is not read-only in the guest:\n%s", r.stdout)
	}
	if dev, _ := report(t, r)["devices"].(map[string]any); dev["blk0"] == nil || dev["rng"] == nil {
		t.Fatalf("report lacks device counters: %v", dev)
	}
}

// TestNestedVsock: the vsock round trip with the VM inside L1: the
// socket on this host reaches it through ember's relay, both ways.
func TestNestedVsock(t *testing.T) {
	needNested(t)
	vsockRoundTrip(t, nestedLimit, 1<<20, "run", "--accel", "nested", "--cache-dir", env.cacheDir, "--cpus", "2")
}

// TestNestedNet: a guest inside L1 on a bridge of this host (through a
// tap ember creates here, which L1 bridges to the inner VM's tap) pings
// this host and sends it 100 MiB over TCP.
func TestNestedNet(t *testing.T) {
	needNested(t)
	netRoundTrip(t, nestedLimit, 100, "run", "--accel", "nested", "--cache-dir", env.cacheDir, "--cpus", "2")
}

// TestNestedStdio: the command's streams stay apart and byte-exact with
// the VM inside L1 (virtio-serial ports between this host and L1, framed
// and acknowledged so nothing is lost when L1 powers off). 8 MiB: the
// full 50 MiB runs in TestVMStdio; two layers of emulated serial ports
// are slow and heavy I/O has crashed the inner guest (known issues).
func TestNestedStdio(t *testing.T) {
	needNested(t)
	stdioChecks(t, nestedLimit, 8, "run", "--accel", "nested", "--cache-dir", env.cacheDir)
}
