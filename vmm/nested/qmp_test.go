package nested

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const registerDump = `
CPU#0
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000001 RDX=0000000000000000
RIP=ffffffff81a3c4ee RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
CR0=80050033 CR2=0000000000000000 CR3=000000000520a000 CR4=00350ef0

CPU#1
RIP=00007f0012345678 RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0
`

func TestSummarizeRegisters(t *testing.T) {
	got := summarizeRegisters(registerDump)
	want := "vCPU 0: RIP 0xffffffff81a3c4ee, CPL 0, halted\nvCPU 1: RIP 0x7f0012345678, CPL 3, running\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if s := summarizeRegisters("garbage"); s != "" {
		t.Errorf("garbage gave %q", s)
	}
}

// TestVCPUStateQEMU asks a real, stopped QEMU where its vCPUs are.
func TestVCPUStateQEMU(t *testing.T) {
	q, err := exec.LookPath(QEMUBinary)
	if err != nil {
		t.Skipf("%s not installed", QEMUBinary)
	}
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(q, "-accel", "tcg", "-smp", "2", "-m", "64", "-nodefaults", "-display", "none", "-S",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// QEMU may not listen yet: ask until it answers, within a bound.
	var got string
	for deadline := time.Now().Add(30 * time.Second); got == "" && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		got = vcpuState(sock)
	}
	// The reset vector, in real mode.
	for _, want := range []string{"vCPU 0: RIP 0xfff0, CPL 0, running", "vCPU 1: RIP"} {
		if !strings.Contains(got, want) {
			t.Errorf("state lacks %q:\n%s", want, got)
		}
	}
	if s := vcpuState(filepath.Join(t.TempDir(), "none")); s != "" {
		t.Errorf("no socket gave %q", s)
	}
}
