package plan

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ember-vmm/ember/vmm"
	"github.com/ember-vmm/ember/vmm/hostio"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// Session is how a run started from a command line meets its caller:
// ember's own stdin, stdout and terminal, and where the report goes.
type Session struct {
	Interactive bool
	// JSON prints the report on stdout when the VM ends; ResultFile
	// also writes it to that file.
	JSON       bool
	ResultFile string
	// Announce tells a terminal user how to quit.
	Announce bool
	// Relayed says the console comes from another ember (the one outside
	// a nested L1), which sends the user's terminal size in band: this
	// process's own terminal is not the user's, and its size is not sent.
	Relayed bool
	KVMPath string
	Log     *slog.Logger
	Started time.Time
	// pre are the marks of a hand-off to ember-vmm.
	pre []vmm.Mark
}

// reportWriteLimit bounds the wait for a stalled stdout to take the JSON
// report: the exit status is what scripts rely on.
const reportWriteLimit = 5 * time.Second

// Serve wires ember's stdin, stdout and terminal to a run, runs it,
// writes the report and returns the exit status ember should exit with.
// The error is for failures before the VM ran.
func (s Session) Serve(run func(Options) (*Report, error)) (int, error) {
	stdout := hostio.Output(os.Stdout)
	if stdout != os.Stdout {
		defer stdout.Close()
	}
	o := Options{KVMPath: s.KVMPath, Stdout: stdout, Stderr: os.Stderr, Log: s.Log, Started: s.Started, pre: s.pre}
	if !s.Interactive && !isTerminal(os.Stdin) && !isNull(os.Stdin) {
		// The command reads ember's stdin; a terminal stays ember's.
		// /dev/null is end of file at once, which is also what no stdin
		// gives, and then a run has no input to lose if it is retried.
		in := hostio.NewInput(os.Stdin)
		defer in.Close()
		o.CommandStdin = in
	}
	if s.Interactive {
		in := hostio.NewInput(os.Stdin)
		defer in.Close()
		o.Stdin = in
		if isTerminal(os.Stdin) {
			old, err := term.MakeRaw(int(os.Stdin.Fd()))
			if err != nil {
				return 0, fmt.Errorf("terminal raw mode: %w", err)
			}
			defer term.Restore(int(os.Stdin.Fd()), old)
			if !s.Relayed {
				o.Terminal = os.Stdin
			}
			if s.Announce {
				fmt.Fprint(os.Stderr, "ember: console attached; Ctrl-A x quits\r\n")
			}
		}
	}
	rep, err := run(o)
	if err != nil {
		return 0, err
	}
	out, _ := json.MarshalIndent(rep, "", "  ")
	if s.ResultFile != "" {
		if err := os.WriteFile(s.ResultFile, append(out, '\n'), 0o644); err != nil {
			return 0, fmt.Errorf("--result-file: %w", err)
		}
	}
	if s.JSON {
		_ = stdout.SetWriteDeadline(time.Now().Add(reportWriteLimit))
		fmt.Fprintln(stdout, string(out))
	}
	if rep.Message != "" {
		fmt.Fprintln(os.Stderr, "ember:", rep.Message)
	}
	if s.Log != nil {
		s.Log.Info("vm ended", "accel", rep.Accel, "outcome", rep.Outcome, "exit_status", rep.ExitStatus,
			"boot_ms", rep.BootMS, "wall_ms", rep.WallMS)
	}
	return rep.ExitStatus, nil
}

// isTerminal says whether f is a terminal.
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// isNull tells whether f is /dev/null (character device 1:3).
func isNull(f *os.File) bool {
	var st unix.Stat_t
	return unix.Fstat(int(f.Fd()), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == unix.Mkdev(1, 3)
}
