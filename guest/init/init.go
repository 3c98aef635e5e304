package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/ember-vmm/ember/guest/proto"
	"golang.org/x/sys/unix"
)

const (
	// defaultPath puts ember's own links (/bin) before u-root's busybox.
	defaultPath = "/bin:/bbin:/usr/bin:/sbin:/usr/sbin"
	// bootTimeEnv carries init's CLOCK_BOOTTIME at start (ns) to its
	// children, for ember-info.
	bootTimeEnv = "EMBER_INIT_BOOTTIME_NS"
)

func logf(format string, a ...any) { fmt.Fprintf(os.Stderr, "ember-init: "+format+"\n", a...) }

// initMain is PID 1: it never returns (host.exit ends the VM).
func initMain() {
	h := openHost()
	// First, before anything slow: the host timestamps this milestone.
	h.mark(proto.MarkInit)
	bootNS := bootTime()

	mountBasics()
	setConsole()
	os.Setenv("PATH", defaultPath)
	os.Setenv("HOME", "/root")
	if os.Getenv("TERM") == "" {
		os.Setenv("TERM", "linux")
	}
	os.Setenv(bootTimeEnv, strconv.FormatInt(bootNS, 10))
	quietSignals()
	loadModules(proto.ModulesFile)

	run, err := readRun(proto.RunFile)
	if err != nil {
		logf("%v", err)
		h.exit(proto.StatusInitFailed)
	}
	if run.Nested != nil {
		h.exit(nestedMain(run))
	}
	if err := enterRoot(run); err != nil {
		logf("%v", err)
		h.exit(proto.StatusInitFailed)
	}
	h.mark(proto.MarkCommand)
	h.exit(runCommand(run))
}

// bootTime is CLOCK_BOOTTIME now: how long the kernel took to reach init.
func bootTime() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// quietSignals keeps PID 1 alive: the kernel delivers to init only the
// signals it handles, and the Go runtime handles all of them, by default
// exiting (a kernel panic for init). Notify, unlike signal.Ignore, does not
// leave SIG_IGN behind for the children, so Ctrl-C still works in them.
func quietSignals() {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGTSTP,
		unix.SIGTTIN, unix.SIGTTOU, unix.SIGUSR1, unix.SIGUSR2)
	go func() {
		for range ch {
		}
	}()
}

type mnt struct {
	src, dst, fstype string
	flags            uintptr
	data             string
}

// mountAll mounts ms in order. A failure is logged and the rest go on: a
// missing /dev/pts should not stop the command; EBUSY means already there.
func mountAll(ms []mnt) error {
	var first error
	for _, m := range ms {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			logf("mkdir %s: %v", m.dst, err)
			first = cmpErr(first, err)
			continue
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			err = fmt.Errorf("mount %s (%s) on %s: %w", m.src, m.fstype, m.dst, err)
			logf("%v", err)
			first = cmpErr(first, err)
		}
	}
	return first
}

// hostRoot is where the host's / is mounted with --rootfs host.
const hostRoot = "/host"

// enterRoot mounts the host's directories (virtio-fs) and, with a host
// root, makes it init's root: the command needs them, so any failure
// stops it.
func enterRoot(r *proto.Run) error {
	prefix := ""
	if r.RootTag != "" {
		prefix = hostRoot
		if err := mountShare(proto.Share{Tag: r.RootTag, Path: "/", ReadOnly: true}, prefix); err != nil {
			return err
		}
		// The guest's own kernel interfaces, and memory where programs
		// write; a directory the host lacks is skipped (the root is
		// read-only, nothing can be made there).
		for _, m := range append(slices.Clone(basicMounts),
			mnt{"tmpfs", "/var/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"}) {
			if st, err := os.Stat(prefix + m.dst); err != nil || !st.IsDir() {
				continue
			}
			if err := unix.Mount(m.src, prefix+m.dst, m.fstype, m.flags, m.data); err != nil {
				return fmt.Errorf("host root: mount %s on %s: %w", m.fstype, m.dst, err)
			}
		}
	}
	// Outer directories first, so an inner one is not hidden; at equal
	// depth a share goes over a tmpfs (the working directory stays the
	// host's).
	type dirMount struct {
		share proto.Share
		tmpfs bool
	}
	var mounts []dirMount
	for _, d := range r.Tmpfs {
		mounts = append(mounts, dirMount{share: proto.Share{Path: d}, tmpfs: true})
	}
	for _, sh := range r.Shares {
		mounts = append(mounts, dirMount{share: sh})
	}
	slices.SortStableFunc(mounts, func(a, b dirMount) int {
		return strings.Count(filepath.Clean(a.share.Path), "/") - strings.Count(filepath.Clean(b.share.Path), "/")
	})
	for _, m := range mounts {
		mount := mountShare
		if m.tmpfs {
			mount = mountTmpfs
		}
		if err := mount(m.share, prefix); err != nil {
			return err
		}
	}
	if prefix == "" {
		return nil
	}
	if err := unix.Chroot(prefix); err != nil {
		return fmt.Errorf("host root: chroot: %w", err)
	}
	return os.Chdir("/")
}

// mountTmpfs covers a directory of the host root with an empty tmpfs
// owned as the directory is.
func mountTmpfs(sh proto.Share, prefix string) error {
	dst := prefix + sh.Path
	var st unix.Stat_t
	if err := unix.Stat(dst, &st); err != nil {
		return fmt.Errorf("tmpfs %s: %w", sh.Path, err)
	}
	data := fmt.Sprintf("mode=%o,uid=%d,gid=%d", st.Mode&0o7777, st.Uid, st.Gid)
	if err := unix.Mount("tmpfs", dst, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		return fmt.Errorf("tmpfs %s: %w", sh.Path, err)
	}
	return nil
}

func mountShare(sh proto.Share, prefix string) error {
	var flags uintptr
	if sh.ReadOnly {
		flags = unix.MS_RDONLY
	}
	dst := prefix + sh.Path
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("share %s: %w", sh.Path, err)
	}
	fstype, data, missing := "virtiofs", "", "virtiofs (CONFIG_VIRTIO_FS; --share DIR,9p uses 9p)"
	if sh.NineP {
		// msize: what the device agrees to; the kernel's default is 128K.
		fstype, data, missing = "9p", "trans=virtio,version=9p2000.L,msize=1048576,cache=mmap", "9p (CONFIG_9P_FS, CONFIG_NET_9P_VIRTIO)"
	}
	if err := unix.Mount(sh.Tag, dst, fstype, flags, data); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("share %s: this kernel has no %s", sh.Path, missing)
		}
		return fmt.Errorf("share %s: mount %s (%s): %w", sh.Path, sh.Tag, fstype, err)
	}
	return nil
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// basicMounts are the kernel's interfaces and the memory programs write
// to, in mount order.
var basicMounts = []mnt{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

func mountBasics() {
	_ = mountAll(basicMounts)
	// What udev would add: programs open /dev/stdout and friends.
	for name, target := range map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, name); err != nil && !errors.Is(err, os.ErrExist) {
			logf("%v", err)
		}
	}
}

// setConsole points stdio at a freshly opened /dev/console: the kernel's
// descriptors are missing when the initramfs has no /dev/console node.
func setConsole() {
	f, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
	if err != nil {
		logf("open /dev/console: %v", err)
		return
	}
	for _, fd := range []int{0, 1, 2} {
		_ = unix.Dup2(int(f.Fd()), fd)
	}
	f.Close()
}

// loadModules loads the modules listed in path in order, each with the
// parameters the kernel command line gives it; a failure is reported and
// the boot goes on.
func loadModules(path string) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		logf("%v", err)
		return
	}
	names, err := parseModuleList(f)
	f.Close()
	if err != nil {
		logf("%s: %v", path, err)
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	words := cmdlineWords(string(cmdline))
	for _, n := range names {
		if err := loadModule(n, moduleParams(words, n)); err != nil {
			logf("module %s: %v", n, err)
		}
	}
}

func loadModule(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// moduleParams picks out of the kernel command line's words the
// "module.param=value" ones for the module at path, as modprobe does: the
// kernel applies them only to built-in code, so a module loaded without
// them ignores what the user asked for. Dashes and underscores in module
// names are the same.
func moduleParams(words []string, path string) string {
	name := filepath.Base(path)
	if i := strings.Index(name, ".ko"); i > 0 {
		name = name[:i]
	}
	name = strings.ReplaceAll(name, "-", "_")
	var out []string
	for _, w := range words {
		mod, param, ok := strings.Cut(w, ".")
		if ok && param != "" && strings.ReplaceAll(mod, "-", "_") == name {
			out = append(out, param)
		}
	}
	return strings.Join(out, " ")
}

// cmdlineWords splits a kernel command line into words; double quotes
// group spaces into a word and are kept, as the kernel passes them on.
func cmdlineWords(s string) []string {
	var words []string
	var w strings.Builder
	quoted := false
	for _, r := range strings.TrimSpace(s) {
		switch {
		case r == '"':
			quoted = !quoted
			w.WriteRune(r)
		case (r == ' ' || r == '\t' || r == '\n') && !quoted:
			if w.Len() > 0 {
				words = append(words, w.String())
				w.Reset()
			}
		default:
			w.WriteRune(r)
		}
	}
	if w.Len() > 0 {
		words = append(words, w.String())
	}
	return words
}

// parseModuleList reads proto.ModulesFile: one path a line, in load order;
// blank lines and #-comments are skipped.
func parseModuleList(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// readRun reads the run file; a missing one means an interactive shell.
func readRun(path string) (*proto.Run, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &proto.Run{}, nil
	}
	if err != nil {
		return nil, err
	}
	r, err := parseRun(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// parseRun decodes and checks a proto.Run.
func parseRun(b []byte) (*proto.Run, error) {
	var r proto.Run
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("bad run file (want proto.Run JSON): %w", err)
	}
	for _, e := range r.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return nil, fmt.Errorf("env entry %q: want KEY=VALUE", e)
		}
	}
	for _, sh := range r.Shares {
		if sh.Tag == "" || !strings.HasPrefix(sh.Path, "/") {
			return nil, fmt.Errorf("share %+v: want a tag and an absolute path", sh)
		}
	}
	if n := r.Nested; n != nil {
		if n.RootTag == "" || n.IOTag == "" {
			return nil, fmt.Errorf("nested: root_tag and io_tag must be set")
		}
		for _, m := range n.Mounts {
			if m.Tag == "" || !strings.HasPrefix(m.Path, "/") {
				return nil, fmt.Errorf("nested mount %+v: want a tag and an absolute path", m)
			}
		}
	}
	return &r, nil
}

// applyEnv adds KEY=VALUE entries to init's environment, so that a PATH
// among them also steers the command lookup.
func applyEnv(env []string) {
	for _, e := range env {
		if k, v, ok := strings.Cut(e, "="); ok && k != "" {
			os.Setenv(k, v)
		}
	}
}

// commandArgs is what init starts: the command, or the shell when there is
// none (r.Shell, else u-root's gosh if present, else sh).
func commandArgs(r *proto.Run, look func(string) (string, error)) []string {
	if len(r.Args) > 0 {
		return r.Args
	}
	if r.Shell != "" {
		return []string{r.Shell}
	}
	if _, err := look("gosh"); err == nil {
		return []string{"gosh"}
	}
	return []string{"sh"}
}

// runCommand runs the command (or a shell) on the console as a session
// leader with the console as controlling terminal, reaps orphans while it
// runs, and returns its exit status.
func runCommand(r *proto.Run) int {
	applyEnv(r.Env)
	args := commandArgs(r, exec.LookPath)
	if len(r.Args) == 0 && isTTY(0) {
		// The interactive shell gets a terminal with a size.
		status, err := runOnPTY(os.Stdin, args, r.Dir, r.Winsize, waitReaping)
		if err == nil {
			return status
		}
		logf("shell on a pseudo-terminal: %v; running it on the console", err)
	}
	if r.Stdio {
		status, err := runOnPorts(args, r.Dir, false)
		if err == nil {
			return status
		}
		logf("%v; running the command on the console, which ember then passes on as its stdout", err)
		openHost().mark(proto.MarkStdioOnConsole)
	}
	cmd, err := startOnConsole(args, r.Dir)
	if err != nil {
		logf("%v", err)
		return proto.StatusInitFailed
	}
	return waitReaping(cmd.Process.Pid)
}

// startOnConsole starts args in a new session with stdio on init's
// console, which becomes the session's controlling terminal (job control
// in shells needs one).
func startOnConsole(args []string, dir string) (*exec.Cmd, error) {
	return startSession(args, dir, os.Stdin, os.Stdout, os.Stderr, isTTY(0))
}

// startSession starts args (looked up in PATH, argv[0] kept as given) in
// a new session with the given stdio; with ctty, stdin becomes the
// session's controlling terminal.
func startSession(args []string, dir string, stdin, stdout, stderr *os.File, ctty bool) (*exec.Cmd, error) {
	path, err := exec.LookPath(args[0])
	if err != nil {
		return nil, fmt.Errorf("command %q not found in PATH (%s)", args[0], os.Getenv("PATH"))
	}
	cmd := exec.Command(path, args[1:]...)
	cmd.Args[0] = args[0]
	cmd.Env, cmd.Dir = os.Environ(), dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	// Ctty names a descriptor of the child: 0 is its stdin.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: ctty, Ctty: 0}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", args[0], err)
	}
	return cmd, nil
}

func isTTY(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// waitReaping waits for pid while reaping every other child, as PID 1
// must; one loop collects all, so no reaper can steal pid's status.
func waitReaping(pid int) int {
	for {
		var ws unix.WaitStatus
		p, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			logf("wait: %v", err)
			return proto.StatusInitFailed
		}
		if p == pid {
			return exitStatus(ws)
		}
	}
}

// exitStatus maps a wait status to a shell-style exit status: the code, or
// 128 plus the signal that killed the process.
func exitStatus(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return proto.StatusInitFailed
}
