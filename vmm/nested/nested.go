// Package nested runs ember inside an "L1" Linux guest under QEMU's
// software emulator (TCG), which emulates AMD SVM with nested paging: with
// kvm-amd loaded there, L1 has a real /dev/kvm. The host's root directory is
// shared read-only over 9p so the same ember binary, kernels and images run
// inside; a small read-write share brings the exit status and result back.
package nested

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/images"
)

// QEMUBinary is the emulator ember runs.
const QEMUBinary = "qemu-system-x86_64"

// Check reports whether the nested path can run here.
func Check() error {
	if _, err := exec.LookPath(QEMUBinary); err != nil {
		return fmt.Errorf("%s not found: install Debian's qemu-system-x86 package", QEMUBinary)
	}
	return nil
}

// Options describe one L1 run.
type Options struct {
	QEMU      string
	Kernel    string // L1 bzImage (Debian's generic amd64 flavour: kvm-amd and 9p)
	Initrd    string // L1 initramfs (images.Cache.L1Initramfs)
	Args      []string
	Env       []string
	Dir       string
	Mounts    []proto.NestedMount
	CPUs      int
	MemoryMiB int
	Stdin     io.Reader
	Stdout    io.Writer
	Stderr    io.Writer
	Log       *slog.Logger
}

// Result is what came back from L1.
type Result struct {
	ExitStatus int
	ResultJSON []byte
	L1Boot     time.Duration // QEMU start to L1 init reaching the command
	Wall       time.Duration
}

const (
	rootTag = "emberroot"
	ioTag   = "emberio"
)

// Run boots L1, runs o.Args there and returns their exit status.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.QEMU == "" {
		o.QEMU = QEMUBinary
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 2048
	}
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	ioDir, err := os.MkdirTemp("", "ember-nested-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(ioDir)
	initrd, err := buildInitrd(o, filepath.Join(ioDir, ".l1-initrd"))
	if err != nil {
		return nil, err
	}
	args := qemuArgs(o, initrd, ioDir)
	o.Log.Debug("starting L1", "qemu", o.QEMU, "args", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, o.QEMU, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Stdin = nil
	if f, ok := o.Stdin.(*os.File); ok && isTTY(f) {
		cmd.Stdin = o.Stdin
	}
	tailBuf := &tailWriter{max: 4096}
	cmd.Stdout = io.MultiWriter(o.Stdout, tailBuf)
	var qerr bytes.Buffer
	cmd.Stderr = &qerr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Run(); err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("L1 guest (QEMU): %v: %s", err, strings.TrimSpace(qerr.String()))
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res := &Result{Wall: time.Since(start)}
	b, err := os.ReadFile(filepath.Join(ioDir, proto.StatusFile))
	if err != nil {
		return nil, fmt.Errorf("the L1 guest ended without reporting a status (it failed to boot or to run ember); its last output:\n%s", tailBuf.String())
	}
	if res.ExitStatus, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
		return nil, fmt.Errorf("L1 status %q: %v", b, err)
	}
	res.ResultJSON, _ = os.ReadFile(filepath.Join(ioDir, proto.ResultFile))
	return res, nil
}

func isTTY(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// buildInitrd appends the run file for L1's init to the L1 image.
func buildInitrd(o Options, path string) (string, error) {
	base, err := os.ReadFile(o.Initrd)
	if err != nil {
		return "", fmt.Errorf("L1 initramfs: %w", err)
	}
	mounts := o.Mounts
	run, err := images.RunArchive(proto.Run{Args: o.Args, Env: o.Env, Dir: o.Dir,
		Nested: &proto.Nested{RootTag: rootTag, IOTag: ioTag, Mounts: mounts}})
	if err != nil {
		return "", err
	}
	for len(base)%4 != 0 {
		base = append(base, 0)
	}
	return path, os.WriteFile(path, append(base, run...), 0o600)
}

// qemuArgs is the recipe: TCG with multi-threading, the "max" CPU model
// (which offers SVM and NPT), no default devices, the serial console on
// stdio, the host root and the IO directory over virtio-9p.
func qemuArgs(o Options, initrd, ioDir string) []string {
	a := []string{
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", strconv.Itoa(o.CPUs), "-m", strconv.Itoa(o.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-kernel", o.Kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet loglevel=1 panic=-1",
		"-virtfs", "local,path=/,mount_tag=" + rootTag + ",security_model=none,multidevs=remap,readonly=on",
		"-virtfs", "local,path=" + ioDir + ",mount_tag=" + ioTag + ",security_model=none",
	}
	for _, m := range o.Mounts {
		v := "local,path=" + m.Path + ",mount_tag=" + m.Tag + ",security_model=none,multidevs=remap"
		if m.ReadOnly {
			v += ",readonly=on"
		}
		a = append(a, "-virtfs", v)
	}
	return a
}

// tailWriter keeps the last bytes written, for error messages.
type tailWriter struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	t.mu.Unlock()
	return len(p), nil
}

func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
