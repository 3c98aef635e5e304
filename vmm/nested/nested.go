// Package nested runs ember inside an "L1" Linux guest under QEMU's
// software emulator (TCG), which emulates AMD SVM with nested paging: with
// kvm-amd loaded there, L1 has a real /dev/kvm (../shared/nested-kvm.md).
// The host's root directory is shared read-only over virtio-9p so the same
// ember binary, kernels and images run inside; a small read-write share
// brings the exit status and result back. ember's guest init, seeing
// proto.Run.Nested, is L1's init.
package nested

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/ember-vmm/ember/vmm/hostio"
	"golang.org/x/sys/unix"
)

// QEMUBinary is the emulator ember runs when Options.QEMU is empty.
const QEMUBinary = "qemu-system-x86_64"

// MinMemoryMiB is the least RAM an L1 guest gets: its kernel, the page
// cache of the shared root and the inner ember need about this much before
// any L2 guest RAM.
const MinMemoryMiB = 1536

// 9p mount tags of the two shares every L1 run has.
const (
	rootTag = "hostroot"
	ioTag   = "emberio"
)

// maxResultSize bounds what is read back from the IO share: L1 is a guest.
const maxResultSize = 16 << 20

// L1 liveness: the L1 init writes a byte to an ISA debug port (QEMU's
// isa-debugcon, whose output is a file on the host) every second, through
// /dev/port: an OUT to that port reaches the file at once, with no driver
// or interrupt in the way. (A serial port did not do: loaded L1 guests went
// minutes without its transmit interrupt while all else in them ran.) No
// byte for Stall (default DefaultStall) means L1 stopped: its kernel locked
// up, or QEMU was stopped. Before the first byte, L1 has BootLimit
// (DefaultBootLimit) to boot.
const (
	DefaultStall     = 2 * time.Minute
	DefaultBootLimit = 3 * time.Minute
	heartbeatDev     = "/dev/port"
	// heartbeatPort is free on QEMU's pc machine: not SeaBIOS's debug
	// port (0x402), whose log would pass for a heartbeat.
	heartbeatPort = 0x4f0
	heartbeatFile = "heartbeat"
)

// ErrL1Stuck is wrapped by Run's error when L1 stopped making progress
// and was killed.
var ErrL1Stuck = errors.New("the nested L1 guest stopped responding")

// tailLines is how much of L1's console output a failure report shows.
const tailLines = 20

// ErrL1Failed is wrapped by Run's error when L1 ended without reporting an
// exit status (it failed to boot, to load KVM or to mount the shares).
var ErrL1Failed = errors.New("the L1 guest failed")

// Check reports whether the nested path can run here.
func Check() error {
	if _, err := exec.LookPath(QEMUBinary); err != nil {
		return fmt.Errorf("%s not found: install Debian package qemu-system-x86", QEMUBinary)
	}
	return nil
}

// Options describe one L1 run.
type Options struct {
	// QEMU is the emulator binary; "" looks up qemu-system-x86_64 in PATH.
	QEMU string
	// Kernel is L1's bzImage (Debian's generic amd64 flavour: kvm-amd, 9p).
	Kernel string
	// Initrd is L1's initramfs: ember's init at /init and the modules it
	// lists in proto.ModulesFile. Run appends the run file to a copy.
	Initrd string
	// Args is the command run inside L1 (the host's root is L1's root):
	// normally the absolute path of ember and its arguments.
	Args []string
	// Env is added to the command's environment (KEY=VALUE).
	Env []string
	// Dir is the working directory inside L1; "" is the current directory.
	Dir string
	// Mounts are extra host directories shared at the same path in L1
	// (the root is already shared whole, read-only). An empty Tag gets one.
	Mounts []proto.NestedMount
	// CPUs is L1's vCPU count (default 2: TCG runs one host thread each).
	CPUs int
	// MemoryMiB is L1's RAM: the inner guest's RAM plus 768 MiB is right;
	// at least MinMemoryMiB.
	MemoryMiB int
	// Stdin, when set, is copied to L1's console (otherwise L1 reads
	// /dev/null). If it is an io.Closer, Run closes it when QEMU exits, and
	// its Read must return then.
	Stdin io.Reader
	// Stdout receives L1's console as it arrives; nil discards it.
	Stdout io.Writer
	// Stdio, when set, carries the command's standard streams over
	// virtio-serial ports instead of L1's console (which then has only
	// L1's own messages).
	Stdio *Stdio
	// Stderr receives QEMU's own diagnostics; nil discards them.
	Stderr io.Writer
	// Log gets progress at debug level (and raises L1's kernel log level).
	Log *slog.Logger
	// Files are host files and directories the command uses besides those
	// named in Args (a kernel and initramfs named in a plan file, a cache):
	// like Args, any under a directory L1 covers with its own tmpfs (/tmp,
	// /run) is shared.
	Files []string
	// IOFiles are written into the read-write IO share before L1 starts
	// (inside L1 at proto.IOMount/<name>): data for the command, such as
	// the resolved VM description.
	IOFiles map[string][]byte
	// Relay, when set, gives L1 a user-mode NIC (with RelayMAC) that
	// carries this vsock relay.
	Relay    *HostRelay
	RelayMAC net.HardwareAddr
	// Taps are host taps L1 gets as NICs.
	Taps []TapNIC
	// Stall and BootLimit bound how long L1 may go without a heartbeat
	// (zero: DefaultStall, DefaultBootLimit).
	Stall, BootLimit time.Duration
}

// Result is what came back from L1.
type Result struct {
	// ExitStatus is the command's exit status inside L1.
	ExitStatus int
	// ResultJSON is proto.ResultFile if the command wrote one.
	ResultJSON []byte
	// L1Boot is from starting QEMU to L1's init starting the command.
	L1Boot time.Duration
	// Wall is the whole QEMU run.
	Wall time.Duration
}

// Run boots L1, runs o.Args there and returns their exit status. On ctx's
// end QEMU is killed and ctx's error returned. Temporary files are removed
// in every case.
//
// An L1 that locks up before it starts the command is booted once more
// (saying so in the log), when that cannot lose anything: there is no
// input that the first L1 may have taken. Under the emulator, L1's kernel
// sometimes wedges for good while it patches its own code (README, known
// issues), and most of that patching happens while it boots.
func Run(ctx context.Context, o Options) (*Result, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	sweepTemp()
	res, started, err := runL1(ctx, o)
	if errors.Is(err, ErrL1Stuck) && !started && o.Stdin == nil && (o.Stdio == nil || o.Stdio.Stdin == nil) {
		o.Log.Warn("nested: L1 locked up before it started the command; booting a fresh one", "err", err)
		res, _, err = runL1(ctx, o)
	}
	return res, err
}

// runL1 is one L1 run; started tells whether L1 got as far as starting
// the command.
func runL1(ctx context.Context, o Options) (*Result, bool, error) {
	tmp, err := os.MkdirTemp("", tempPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, false, fmt.Errorf("nested: %w", err)
	}
	defer os.RemoveAll(tmp)
	ioDir := filepath.Join(tmp, "io")
	if err := os.Mkdir(ioDir, 0o755); err != nil {
		return nil, false, fmt.Errorf("nested: %w", err)
	}
	for name, b := range o.IOFiles {
		if err := os.WriteFile(filepath.Join(ioDir, name), b, 0o644); err != nil {
			return nil, false, fmt.Errorf("nested: %w", err)
		}
	}
	initrd := filepath.Join(tmp, "l1-initrd.cpio")
	if err := buildInitrd(o, initrd); err != nil {
		return nil, false, err
	}
	hb := filepath.Join(tmp, heartbeatFile)
	debug := o.Log.Enabled(ctx, slog.LevelDebug)
	qmp := filepath.Join(tmp, "qmp.sock")
	args := qemuArgs(o, initrd, ioDir, hb, qmp, debug)
	var link *stdioLink
	if o.Stdio != nil {
		if link, err = startStdio(tmp, o.Stdio); err != nil {
			return nil, false, err
		}
		defer link.close()
		args = append(args, link.args()...)
	}
	o.Log.Debug("nested: starting L1", "qemu", o.QEMU, "args", strings.Join(args, " "))

	cmd := exec.Command(o.QEMU, args...)
	// QEMU dies with ember (Pdeathsig) and is killed as a group on cancel.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	for _, t := range o.Taps {
		cmd.ExtraFiles = append(cmd.ExtraFiles, t.File)
	}
	var stdin io.WriteCloser
	if o.Stdin != nil {
		// QEMU reads a pipe, never the terminal itself: ember keeps the
		// terminal (raw mode, size changes) and QEMU can live in a process
		// group of its own, killed as a whole.
		if stdin, err = cmd.StdinPipe(); err != nil {
			return nil, false, fmt.Errorf("nested: %w", err)
		}
	}
	tail := &hostio.Tail{Max: 16 << 10}
	cmd.Stdout = io.MultiWriter(o.Stdout, tail)
	qerr := hostio.Tail{Max: 16 << 10}
	cmd.Stderr = io.MultiWriter(o.Stderr, &qerr)
	cmd.WaitDelay = 5 * time.Second

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("nested: starting %s: %w", o.QEMU, err)
	}
	copied := make(chan struct{})
	if stdin != nil {
		go func() {
			defer close(copied)
			_, _ = io.Copy(stdin, o.Stdin)
			stdin.Close()
		}()
	} else {
		close(copied)
	}
	waited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		if c, ok := o.Stdin.(io.Closer); ok && c != nil {
			c.Close()
		}
		<-copied
		waited <- err
	}()

	kill := func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-waited
	}
	live := newLiveness(hb, o.Stall, o.BootLimit, start)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var qemuErr error
wait:
	for {
		select {
		case qemuErr = <-waited:
			break wait
		case <-ctx.Done():
			kill()
			return nil, false, ctx.Err()
		case now := <-tick.C:
			if msg := live.check(now); msg != "" {
				cpus := vcpuState(qmp)
				kill()
				_, err := os.Lstat(filepath.Join(ioDir, proto.StartedFile))
				return nil, err == nil, fmt.Errorf("nested: %w: %s; it was stopped.\n%sLast console output:\n%s", ErrL1Stuck, msg, cpus, lastLines(tail.String(), tailLines))
			}
		}
	}
	if link != nil {
		if err := link.finish(); err != nil {
			o.Log.Warn("nested: command output", "err", err)
		}
	}
	res := &Result{Wall: time.Since(start)}
	// QEMU's 9p server creates the file on the host, so its mtime is on
	// the host's clock.
	if st, err := os.Stat(filepath.Join(ioDir, proto.StartedFile)); err == nil && st.ModTime().After(start) {
		res.L1Boot = st.ModTime().Sub(start)
	}
	o.Log.Debug("nested: L1 ended", "wall", res.Wall, "l1_boot", res.L1Boot, "qemu", qemuErr)

	raw, err := readLimited(filepath.Join(ioDir, proto.StatusFile))
	if errors.Is(err, os.ErrNotExist) {
		msg := "ended without reporting an exit status"
		if qemuErr != nil {
			msg = fmt.Sprintf("QEMU: %v", qemuErr)
			if s := strings.TrimSpace(qerr.String()); s != "" {
				msg += ": " + s
			}
		}
		return nil, false, fmt.Errorf("nested: %w (%s); last console output:\n%s", ErrL1Failed, msg, lastLines(tail.String(), tailLines))
	}
	if err != nil {
		return nil, false, fmt.Errorf("nested: %w", err)
	}
	if res.ExitStatus, err = parseStatus(raw); err != nil {
		return nil, false, fmt.Errorf("nested: %s from L1: %w", proto.StatusFile, err)
	}
	if qemuErr != nil {
		o.Log.Warn("nested: QEMU failed after L1 reported its status", "err", qemuErr)
	}
	res.ResultJSON, err = readLimited(filepath.Join(ioDir, proto.ResultFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("nested: %w", err)
	}
	return res, true, nil
}

// tempPrefix names Run's temporary directories, followed by the owning
// process's ID, so leftovers of an ember that was killed can be told from
// the work of one that runs.
const tempPrefix = "ember-nested-"

// sweepTemp removes temporary directories of embers that are gone.
func sweepTemp() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, d := range dirs {
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), tempPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// withDefaults checks o and fills in its defaults.
func (o Options) withDefaults() (Options, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Stall <= 0 {
		o.Stall = DefaultStall
	}
	if o.BootLimit <= 0 {
		o.BootLimit = DefaultBootLimit
	}
	if o.QEMU == "" {
		p, err := exec.LookPath(QEMUBinary)
		if err != nil {
			return o, Check()
		}
		o.QEMU = p
	}
	if o.Kernel == "" || o.Initrd == "" {
		return o, fmt.Errorf("nested: an L1 kernel and initramfs are required (kernel %q, initrd %q)", o.Kernel, o.Initrd)
	}
	if _, err := os.Stat(o.Kernel); err != nil {
		return o, fmt.Errorf("nested: L1 kernel: %w", err)
	}
	if len(o.Args) == 0 {
		return o, fmt.Errorf("nested: no command to run in L1")
	}
	if o.Dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return o, fmt.Errorf("nested: working directory: %w", err)
		}
		o.Dir = wd
	}
	if o.CPUs <= 0 {
		o.CPUs = 2
	}
	o.MemoryMiB = max(o.MemoryMiB, MinMemoryMiB)
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	need := []string{o.Dir}
	for _, a := range append(append([]string{}, o.Args...), o.Files...) {
		st, err := os.Stat(a)
		switch {
		case !filepath.IsAbs(a) || err != nil:
		case st.IsDir():
			need = append(need, a)
		default:
			need = append(need, filepath.Dir(a))
		}
	}
	o.Mounts = append(o.Mounts, overlaidPaths(o.Mounts, need...)...)
	// L1 mounts them in order: a directory before anything inside it, or
	// the outer share would hide the inner one.
	slices.SortStableFunc(o.Mounts, func(a, b proto.NestedMount) int {
		return strings.Count(filepath.Clean(a.Path), "/") - strings.Count(filepath.Clean(b.Path), "/")
	})
	mounts := make([]proto.NestedMount, len(o.Mounts))
	tags := map[string]bool{rootTag: true, ioTag: true}
	for i, m := range o.Mounts {
		if m.Tag == "" {
			m.Tag = "embermnt" + strconv.Itoa(i)
		}
		if tags[m.Tag] {
			return o, fmt.Errorf("nested: mount %s: tag %q used twice", m.Path, m.Tag)
		}
		tags[m.Tag] = true
		if !filepath.IsAbs(m.Path) {
			return o, fmt.Errorf("nested: mount %q: want an absolute path", m.Path)
		}
		if st, err := os.Stat(m.Path); err != nil || !st.IsDir() {
			return o, fmt.Errorf("nested: mount %q: want an existing directory", m.Path)
		}
		mounts[i] = m
	}
	o.Mounts = mounts
	return o, nil
}

// l1Overlays are the host directories L1 covers with its own tmpfs.
var l1Overlays = []string{"/tmp", "/run"}

// overlaidPaths returns read-only shares for the paths (the working
// directory, the program's directory) that L1's tmpfs mounts would hide,
// such as a checkout under /tmp, unless an existing mount covers them.
func overlaidPaths(have []proto.NestedMount, paths ...string) []proto.NestedMount {
	var out []proto.NestedMount
	covered := func(p string) bool {
		for _, m := range append(append([]proto.NestedMount{}, have...), out...) {
			if p == m.Path || strings.HasPrefix(p, m.Path+"/") {
				return true
			}
		}
		return false
	}
	for _, p := range paths {
		p = filepath.Clean(p)
		hidden := false
		for _, o := range l1Overlays {
			hidden = hidden || p == o || strings.HasPrefix(p, o+"/")
		}
		if !hidden || covered(p) || !filepath.IsAbs(p) {
			continue
		}
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			out = append(out, proto.NestedMount{Path: p, ReadOnly: true, Tag: "emberhidden" + strconv.Itoa(len(have)+len(out))})
		}
	}
	return out
}

// runFile is what L1's init reads: the command and where the shares are.
func runFile(o Options) proto.Run {
	return proto.Run{Args: o.Args, Env: o.Env, Dir: o.Dir, Stdio: o.Stdio != nil,
		Nested: &proto.Nested{RootTag: rootTag, IOTag: ioTag, Mounts: o.Mounts, Heartbeat: heartbeatDev, HeartbeatOffset: heartbeatPort}}
}

// buildInitrd writes o.Initrd followed by the run archive to path. The
// archive starts 4-byte aligned, as the initramfs format requires
// (Documentation/driver-api/early-userspace/buffer-format.rst).
func buildInitrd(o Options, path string) error {
	arch, err := proto.Archive(runFile(o))
	if err != nil {
		return fmt.Errorf("nested: run file: %w", err)
	}
	src, err := os.Open(o.Initrd)
	if err != nil {
		return fmt.Errorf("nested: L1 initramfs: %w", err)
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("nested: %w", err)
	}
	n, err := io.Copy(dst, src)
	if err == nil {
		_, err = dst.Write(append(make([]byte, (4-n%4)%4), arch...))
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("nested: writing the L1 initramfs: %w", err)
	}
	return nil
}

// qemuArgs is the recipe of nested-kvm.md: TCG with one thread per vCPU,
// the "max" CPU model (it offers SVM and NPT), no default devices, the
// serial console on stdio, the host root (read-only) and the IO directory
// over virtio-9p, then the extra shares.
func qemuArgs(o Options, initrd, ioDir, heartbeat, qmp string, debug bool) []string {
	cmdline := "console=ttyS0 quiet loglevel=0 panic=-1"
	if debug {
		cmdline = "console=ttyS0 loglevel=7 panic=-1"
	}
	// kvm-amd without nested paging: L1 shadows the inner guest's page
	// tables itself instead of relying on the emulator's NPT, under which
	// heavy guest I/O triple-faulted or hung the inner guests (README,
	// known issues); a boot takes about 15 % longer. L1's init passes
	// these words to the module it loads. Virtual GIF and virtual
	// VMLOAD/VMSAVE only help a guest that runs guests of its own, which
	// the inner VM never does.
	cmdline += " kvm_amd.npt=0 kvm_amd.vgif=0 kvm_amd.vls=0"
	// L1's timer in periodic mode, not one-shot: loaded L1 guests have
	// gone minutes without a timer interrupt on a CPU while interrupt-
	// driven work went on. A one-shot timer whose interrupt is lost is
	// never armed again, and every sleeper and timeout on that CPU
	// (L1's heartbeat; the inner guest's own timer, which KVM runs on
	// L1's) waits for ever; a periodic one misses one tick.
	cmdline += " lapic=notscdeadline highres=off nohz=off"
	// Kernel addresses the same in every boot, so those in the report of
	// a stuck L1 can be looked up in another L1's /proc/kallsyms.
	cmdline += " nokaslr"
	a := []string{
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", strconv.Itoa(o.CPUs), "-m", strconv.Itoa(o.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-chardev", "file,id=hb,path=" + heartbeat, "-device", fmt.Sprintf("isa-debugcon,iobase=%#x,chardev=hb", heartbeatPort),
		"-qmp", "unix:" + strings.ReplaceAll(qmp, ",", ",,") + ",server=on,wait=off",
		"-kernel", o.Kernel, "-initrd", initrd, "-append", cmdline,
		"-virtfs", virtfs("/", rootTag, true),
		"-virtfs", virtfs(ioDir, ioTag, false),
	}
	for _, m := range o.Mounts {
		a = append(a, "-virtfs", virtfs(m.Path, m.Tag, m.ReadOnly))
	}
	// NICs carry no option ROM: L1 boots straight into its kernel.
	if o.Relay != nil {
		a = append(a, "-netdev", "user,id=relay,hostfwd="+o.Relay.hostFwd(),
			"-device", "virtio-net-pci,netdev=relay,romfile=,mac="+o.RelayMAC.String())
	}
	for i, t := range o.Taps {
		// ExtraFiles start at descriptor 3. vhost needs /dev/vhost-net,
		// which hosts without KVM lack.
		id := "tap" + strconv.Itoa(i)
		a = append(a, "-netdev", "tap,id="+id+",fd="+strconv.Itoa(3+i)+",vhost=off",
			"-device", "virtio-net-pci,netdev="+id+",romfile=,mac="+t.MAC.String())
	}
	return a
}

// virtfs is one -virtfs option. multidevs=remap keeps inode numbers unique
// when the share spans several host filesystems; commas in the path are
// doubled, QEMU's option escape.
func virtfs(path, tag string, ro bool) string {
	s := "local,path=" + strings.ReplaceAll(path, ",", ",,") + ",mount_tag=" + tag +
		",security_model=none,multidevs=remap"
	if ro {
		s += ",readonly=on"
	}
	return s
}

// parseStatus reads StatusFile's decimal exit status.
func parseStatus(b []byte) (int, error) {
	s := strings.TrimSpace(string(b))
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 255 {
		return 0, fmt.Errorf("%q is not an exit status (want 0-255 in decimal)", s)
	}
	return n, nil
}

// readLimited reads a file L1 wrote into the IO share. L1 is a guest: the
// file may be a symlink to a host file, a FIFO nobody will ever write, or
// huge. Only a regular file is read, without following links, without
// blocking on open, and at most maxResultSize bytes.
func readLimited(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s: a symbolic link, not a file", filepath.Base(path))
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", filepath.Base(path), st.Mode().Type())
	}
	if st.Size() > maxResultSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", filepath.Base(path), maxResultSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxResultSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxResultSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", filepath.Base(path), maxResultSize)
	}
	return b, nil
}

// liveness watches the heartbeat file grow.
type liveness struct {
	path              string
	stall, bootLimit  time.Duration
	start, lastChange time.Time
	size              int64
	seen              bool
}

func newLiveness(path string, stall, bootLimit time.Duration, start time.Time) *liveness {
	return &liveness{path: path, stall: stall, bootLimit: bootLimit, start: start, lastChange: start}
}

// check returns why L1 counts as stuck at now, or "".
func (l *liveness) check(now time.Time) string {
	if st, err := os.Stat(l.path); err == nil && st.Size() != l.size {
		l.size, l.lastChange, l.seen = st.Size(), now, true
		return ""
	}
	switch {
	case !l.seen && now.Sub(l.start) > l.bootLimit:
		return fmt.Sprintf("no sign of life %s after it was started", l.bootLimit)
	case l.seen && now.Sub(l.lastChange) > l.stall:
		return fmt.Sprintf("no heartbeat for %s", now.Sub(l.lastChange).Round(time.Second))
	}
	return ""
}

// lastLines is the last n lines of s, without carriage returns (the
// serial console writes CRLF).
func lastLines(s string, n int) string {
	s = strings.TrimRight(strings.ReplaceAll(s, "\r", ""), "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
