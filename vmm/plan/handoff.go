package plan

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ember-vmm/ember/vmm"
	"github.com/ember-vmm/ember/vmm/ratelimit"
	"golang.org/x/sys/unix"
)

// VMMName is the VMM executable, installed beside ember.
const VMMName = "ember-vmm"

// maxPlan bounds a plan read from a file or descriptor.
const maxPlan = 1 << 20

// VMMBinary is the ember-vmm beside the running executable, or an error
// saying why there is none.
func VMMBinary() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(exe), VMMName)
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file", p)
	}
	return p, nil
}

// Handoff replaces this process with the VMM executable vmm running p for
// s: the VM runs in a process that links only what a VMM needs, under
// the same PID, with the same stdio. The plan travels in a memfd. It
// returns only if the exec failed, and then nothing has run yet.
func Handoff(exe string, p *Plan, s Session, logLevel string) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}
	// No MFD_CLOEXEC: the descriptor must survive the exec.
	fd, err := unix.MemfdCreate("ember-plan", 0)
	if err != nil {
		return fmt.Errorf("plan memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ember-plan")
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("plan memfd: %w", err)
	}
	args := []string{exe, "--plan-fd", strconv.Itoa(fd), "--log-level", logLevel,
		"--started", strconv.FormatInt(s.Started.UnixNano(), 10), "--kvm-device", s.KVMPath,
		"--handoff", strconv.FormatInt(time.Now().UnixNano(), 10)}
	if s.ResultFile != "" {
		args = append(args, "--result-file", s.ResultFile)
	}
	for _, fl := range []struct {
		on   bool
		name string
	}{{s.JSON, "--json"}, {s.Announce, "--announce"}, {s.Relayed, "--relayed"}} {
		if fl.on {
			args = append(args, fl.name)
		}
	}
	// The taps the front end opened pass to ember-vmm by number.
	for _, n := range p.Nets {
		if _, err := unix.FcntlInt(uintptr(n.FD), unix.F_SETFD, 0); err != nil {
			f.Close()
			return fmt.Errorf("tap %s: %w", n.Tap, err)
		}
	}
	err = syscall.Exec(exe, args, vmmEnv(os.Environ(), p.CPUs))
	f.Close()
	return fmt.Errorf("exec %s: %w", exe, err)
}

// vmmEnv is ember-vmm's environment: env, with GOMAXPROCS at the VM's
// vCPU count plus one unless the user set it. A vCPU thread in KVM_RUN
// keeps its scheduler slot until the runtime's monitor takes it back,
// which is at least two of its ticks (tens of microseconds, or whole
// timer ticks on a host without high-resolution timers): with a slot per
// vCPU only, every device wake-up waited for that. The spare slot lets
// device goroutines run at once; more slots would only add partly
// filled heap spans (a few hundred KiB each). GODEBUG gains
// disablethp=1 in front of the user's settings (see below).
func vmmEnv(env []string, cpus int) []string {
	out := make([]string, 0, len(env)+2)
	procs, godebug := false, false
	for _, e := range env {
		switch {
		case strings.HasPrefix(e, "GOMAXPROCS="):
			procs = true
		case strings.HasPrefix(e, "GODEBUG="):
			// Hosts with transparent huge pages "always" (Debian's
			// default) would back the Go heap with 2 MiB pages:
			// megabytes resident for a heap of hundreds of KiB. Unlike
			// PR_SET_THP_DISABLE this leaves guest RAM to its own
			// setting. A user's own disablethp comes later and wins.
			e, godebug = "GODEBUG=disablethp=1,"+strings.TrimPrefix(e, "GODEBUG="), true
		}
		out = append(out, e)
	}
	if !procs {
		out = append(out, "GOMAXPROCS="+strconv.Itoa(max(1, cpus)+1))
	}
	if !godebug {
		out = append(out, "GODEBUG=disablethp=1")
	}
	return out
}

// Main is ember-vmm: it runs the plan that ember handed off and returns
// the exit status.
func Main(args []string, stderr io.Writer) int {
	mainStart := time.Now()
	fs := flag.NewFlagSet(VMMName, flag.ContinueOnError)
	planFD := fs.Int("plan-fd", -1, "descriptor holding the plan (JSON)")
	planFile := fs.String("plan", "", "file holding the plan (JSON)")
	level := fs.String("log-level", "warn", "log level: debug, info, warn or error")
	started := fs.Int64("started", 0, "when ember started, in Unix nanoseconds")
	handoff := fs.Int64("handoff", 0, "when ember executed ember-vmm, in Unix nanoseconds")
	var s Session
	fs.StringVar(&s.KVMPath, "kvm-device", "/dev/kvm", "KVM device")
	fs.StringVar(&s.ResultFile, "result-file", "", "also write the JSON result to this file")
	fs.BoolVar(&s.JSON, "json", false, "print a JSON result on stdout when the VM ends")
	fs.BoolVar(&s.Announce, "announce", false, "tell a terminal user how to quit")
	fs.BoolVar(&s.Relayed, "relayed", false, "the console is relayed by another ember, with the terminal's size in band")
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return ExitError
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "ember:", err)
		return ExitError
	}
	var err error
	if s.Log, err = NewLogger(stderr, *level); err != nil {
		return fail(err)
	}
	s.Started = time.Now()
	if *started > 0 {
		s.Started = time.Unix(0, *started)
	}
	if *handoff > 0 {
		s.pre = []vmm.Mark{{Name: markHandoff, At: time.Unix(0, *handoff)}, {Name: markVMMStart, At: mainStart}}
	}
	var src io.Reader
	switch {
	case *planFD >= 0:
		f := os.NewFile(uintptr(*planFD), "plan")
		if f == nil {
			return fail(fmt.Errorf("--plan-fd %d: not a descriptor", *planFD))
		}
		unix.CloseOnExec(*planFD)
		defer f.Close()
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fail(fmt.Errorf("--plan-fd %d: %w", *planFD, err))
		}
		src = f
	case *planFile != "":
		f, err := os.Open(*planFile)
		if err != nil {
			return fail(fmt.Errorf("plan: %w", err))
		}
		defer f.Close()
		src = f
	default:
		return fail(errors.New("no plan: give --plan-fd or --plan"))
	}
	p, err := ReadPlan(src)
	if err != nil {
		return fail(err)
	}
	s.Interactive = p.Interactive
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	status, err := s.Serve(func(o Options) (*Report, error) { return Run(ctx, p, o) })
	if err != nil {
		return fail(err)
	}
	return status
}

// ReadPlan reads a plan of at most maxPlan bytes of JSON.
func ReadPlan(r io.Reader) (*Plan, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxPlan+1))
	if err != nil || len(b) > maxPlan {
		return nil, fmt.Errorf("plan: unreadable or larger than %d bytes (%v)", maxPlan, err)
	}
	var p Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	return &p, nil
}

// NewLogger is ember's log at level (debug, info, warn or error) on w.
// It also becomes the default: libraries that print through the standard
// log package (go-fuse does, on what a guest sends) go through it at
// debug level, rate-limited, never straight onto stderr.
func NewLogger(w io.Writer, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: expected debug, info, warn or error", level)
	}
	l := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
	log.SetFlags(0)
	slog.SetDefault(ratelimit.NewLogger(l, 20, time.Second))
	slog.SetLogLoggerLevel(slog.LevelDebug)
	return l, nil
}
