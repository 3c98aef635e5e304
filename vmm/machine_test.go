package vmm

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ember-vmm/ember/vmm/kvm"
	"golang.org/x/sys/unix"
)

// These tests boot tiny synthetic guests on real KVM. Where /dev/kvm is
// not backed by hardware virtualization they skip; the end-to-end suite
// runs this package's tests inside the nested L1 guest and fails if they
// skipped there.
func usable(t *testing.T) {
	t.Helper()
	if !kvm.HardwareBacked() {
		t.Skip("SKIP: no hardware-backed /dev/kvm here (the end-to-end suite runs these tests inside the nested L1 guest)")
	}
}

func testMachine(t *testing.T, code []byte, mod func(*Config)) *Machine {
	t.Helper()
	usable(t)
	cfg := Config{Kernel: testKernel(t, code), CPUs: 1, Memory: 64 << 20}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

func run(t *testing.T, m *Machine, limit time.Duration) (*Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	return m.Run(ctx)
}

func TestMachineExitStatus(t *testing.T) {
	m := testMachine(t, append(outb(0x0ff0, 42), cliHlt...), nil)
	r, err := run(t, m, time.Minute)
	if err != nil || r.Outcome != OutcomeExited || r.Status != 42 {
		t.Fatalf("Run = %+v, %v; want exited 42", r, err)
	}
	if r.Exits["io"] == 0 {
		t.Fatalf("exit counts %v lack the port write", r.Exits)
	}
	// The timeline: created, first KVM_RUN, the status, the end, in order,
	// with the port write counted before the status arrived.
	var names []string
	for i, k := range r.Marks {
		names = append(names, k.Name)
		if i > 0 && k.At.Before(r.Marks[i-1].At) {
			t.Errorf("mark %s before %s", k.Name, r.Marks[i-1].Name)
		}
	}
	if strings.Join(names, " ") != "created first_run command_exit ended" || r.Marks[2].Exits == 0 {
		t.Errorf("marks %+v", r.Marks)
	}
	if _, err := m.Run(context.Background()); !errors.Is(err, ErrAlreadyRun) {
		t.Fatalf("second Run = %v", err)
	}
}

// TestMachineHaltedForGood: a guest that parks its only CPU with
// interrupts off ends as powered off instead of running forever.
func TestMachineHaltedForGood(t *testing.T) {
	for _, c := range []struct {
		name string
		code []byte
	}{
		{"silent", cliHlt},
		{"with the kernel's last words", printThenHalt("[   1.0] reboot: System halted\r\n")},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out syncBuf
			m := testMachine(t, c.code, func(cfg *Config) { cfg.Console = &out })
			start := time.Now()
			r, err := run(t, m, 2*time.Minute)
			if err != nil || r.Outcome != OutcomePowerOff || !strings.Contains(r.Reason, "halted") {
				t.Fatalf("Run = %+v, %v; want poweroff because the vCPUs halted", r, err)
			}
			t.Logf("ended after %s (%s); console %q", time.Since(start).Round(time.Millisecond), r.Reason, out.String())
		})
	}
}

// panicky is a device with a bug.
type panicky struct{}

func (panicky) Read(uint64, []byte)  { panic("device bug on read") }
func (panicky) Write(uint64, []byte) { panic("device bug on write") }

// TestMachinePanicInDevice: a panic in a device (on a vCPU thread) ends the
// run with an error and a complete result, not a dead process.
func TestMachinePanicInDevice(t *testing.T) {
	m := testMachine(t, append(outb(0x500, 1), spin...), func(cfg *Config) {
		cfg.testPIO = []testDevice{{base: 0x500, size: 1, dev: panicky{}}}
	})
	r, err := run(t, m, time.Minute)
	if err == nil || r == nil || r.Outcome != OutcomeError || !strings.Contains(err.Error(), "device bug on write") {
		t.Fatalf("Run = %+v, %v; want an error result naming the panic", r, err)
	}
	if r.Exits["io"] == 0 {
		t.Fatalf("result incomplete: exits %v", r.Exits)
	}
}

func TestMachineTimeout(t *testing.T) {
	m := testMachine(t, spin, func(cfg *Config) { cfg.CPUs = 2 })
	r, err := run(t, m, 2*time.Second)
	if err != nil || r.Outcome != OutcomeTimeout {
		t.Fatalf("Run = %+v, %v; want timeout", r, err)
	}
	// Both vCPUs were stopped inside the spinning code.
	if len(r.StoppedAt) != 2 || r.StoppedAt[0] < 0x100_0000 || r.StoppedAt[0] > 0x100_1000 {
		t.Fatalf("stopped at %#x, want both vCPUs in the kernel's loop at 16 MiB", r.StoppedAt)
	}
}

// TestMachineCloseWhileRunning: Close stops a running guest, waits for Run
// and only then releases the vCPUs.
func TestMachineCloseWhileRunning(t *testing.T) {
	usable(t)
	m, err := New(Config{Kernel: testKernel(t, spin), CPUs: 2, Memory: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var ran atomic.Bool
	res := make(chan *Result, 1)
	go func() {
		r, _ := m.Run(context.Background())
		ran.Store(true)
		res <- r
	}()
	time.Sleep(500 * time.Millisecond)
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !ran.Load() {
		t.Fatal("Close returned before Run did")
	}
	if r := <-res; r.Outcome != OutcomeCanceled {
		t.Fatalf("outcome %s, want canceled", r.Outcome)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := m.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close = %v", err)
	}
}

// TestMachineStalledConsole: the guest prints far more than the console
// buffer (made small here: every byte is a VM exit) and the pipe hold into
// a pipe nobody reads; the guest still finishes, Run returns within its
// drain bound, and the lost bytes are counted.
func TestMachineStalledConsole(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 4096); err != nil {
		t.Fatal(err)
	}
	line := strings.Repeat("z", 63) + "\n"
	m := testMachine(t, printLoop(line, 600, 7), func(cfg *Config) {
		cfg.Console = w
		cfg.ConsoleDrain = 500 * time.Millisecond
		cfg.consoleBuffer = 4096
	})
	start := time.Now()
	res, err := run(t, m, 5*time.Minute)
	if err != nil || res.Outcome != OutcomeExited || res.Status != 7 {
		t.Fatalf("Run = %+v, %v; want exited 7", res, err)
	}
	if res.ConsoleDropped == 0 {
		t.Fatal("no dropped bytes counted although nobody read the console")
	}
	t.Logf("%d of %d bytes dropped; run took %s", res.ConsoleDropped, 600*len(line), time.Since(start).Round(time.Millisecond))
}

// TestBootedAtCommand: Booted closes when the guest's command starts, not
// at init, and a repeated report does not close it twice.
func TestBootedAtCommand(t *testing.T) {
	m := &Machine{booted: make(chan struct{})}
	m.mark(MarkInit)
	select {
	case <-m.Booted():
		t.Fatal("booted at init")
	default:
	}
	m.mark(MarkCommand)
	m.mark(MarkCommand)
	select {
	case <-m.Booted():
	default:
		t.Fatal("not booted after the command started")
	}
}
