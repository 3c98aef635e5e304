package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

type result struct {
	stdout, stderr string
	code           int
	elapsed        time.Duration
}

// ember runs bin/ember with args and returns its output and exit status,
// once more if the first run hung or crashed (retried).
func ember(t testing.TB, limit time.Duration, args ...string) result {
	t.Helper()
	return emberIn(t, limit, nil, args...)
}

// emberIn is ember with stdin as ember's standard input.
func emberIn(t testing.TB, limit time.Duration, stdin []byte, args ...string) result {
	t.Helper()
	return retried(t, limit, args, func() (result, bool) { return emberOnce(t, limit, stdin, args...) })
}

// retried runs one attempt of a VM (try: ember's result, and whether it
// was still running at limit) and, if it hung or its guest crashed,
// runs it once more, saying so: under the nested emulation a guest with 2
// vCPUs now and then stops making progress or crashes (README, known
// issues); a second hang fails the test, a second crash is the result.
// try sets up anew whatever the VM talks to on the host, so an attempt
// never meets what the one before left behind.
func retried(t testing.TB, limit time.Duration, args []string, try func() (result, bool)) result {
	t.Helper()
	r, hung := try()
	// A crash of the emulated CPU shows as a triple fault, or as a reset
	// (the kernel's panic=-1 reboot) before the command reported; the
	// nested L1 guest itself can lock up too (exit 122), or die.
	out := r.stdout + r.stderr
	crashed := r.code == 123 && (strings.Contains(out, "triple-faulted") || strings.Contains(out, "ended (reset"))
	stuck := r.code == 122 && strings.Contains(out, "stopped responding")
	// The L1 guest has also died outright, without a word on its console
	// (README, known issues): ember says so and exits 125.
	died := r.code == 125 && strings.Contains(out, "the L1 guest failed (ended without reporting")
	if hung || crashed || stuck || died {
		what := "was still running after " + limit.String()
		switch {
		case crashed:
			what = "ended with a crash (" + crashLine(out) + ")"
		case stuck:
			what = "lost its nested L1 guest (exit 122)"
		case died:
			what = "lost its nested L1 guest, which ended without a status"
		}
		t.Logf("RETRY: ember %s %s (stopped at %s); running it once more\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), what, stoppedAt(r.stdout), clip(r.stdout), clip(r.stderr))
		r, hung = try()
		if hung {
			t.Fatalf("ember %s: still running after %s and interrupted, twice (exit %d)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), limit, r.code, clip(r.stdout), clip(r.stderr))
		}
	}
	t.Logf("ember %s → %d in %s", strings.Join(args, " "), r.code, r.elapsed.Round(time.Millisecond))
	return r
}

// crashLine is ember's line about how the guest ended.
func crashLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "triple-faulted") || strings.Contains(l, "ended (reset") {
			return strings.TrimSpace(l)
		}
	}
	return "?"
}

// clip is the end of a command's output for a log: what a guest streamed
// (megabytes through cat) would drown the rest.
func clip(s string) string {
	const keep = 8 << 10
	if len(s) <= keep {
		return s
	}
	return fmt.Sprintf("[%d bytes before]\n%s", len(s)-keep, s[len(s)-keep:])
}

// stoppedAt is the vCPUs' instruction pointers in a --json report, if any.
func stoppedAt(stdout string) string {
	i := strings.Index(stdout, `"stopped_at"`)
	if i < 0 {
		return "an unknown place"
	}
	j := strings.Index(stdout[i:], "]")
	if j < 0 {
		return "an unknown place"
	}
	return strings.Join(strings.Fields(stdout[i+len(`"stopped_at": [`):i+j]), " ")
}

// emberOnce runs ember once; hung reports that it was still running at
// limit and was interrupted.
func emberOnce(t testing.TB, limit time.Duration, stdin []byte, args ...string) (r result, hung bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.ember, args...)
	// On the deadline, ask ember to stop (it reports the outcome) before
	// killing it.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r = result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.code = ee.ExitCode()
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
		return r, true
	default:
		t.Fatalf("ember %s: %v (after %s)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, r.elapsed, r.stdout, r.stderr)
	}
	return r, false
}

// vmArgs prefixes run arguments with what every VM test uses here.
func vmArgs(args ...string) []string {
	return append([]string{"run", "--accel", "kvm", "--cache-dir", env.cacheDir}, args...)
}

func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

func wantOut(t *testing.T, r result, substr string) {
	t.Helper()
	if !strings.Contains(r.stdout, substr) {
		t.Fatalf("stdout lacks %q\nstdout:\n%s\nstderr:\n%s", substr, r.stdout, r.stderr)
	}
}

// report decodes the last JSON object ember printed with --json.
func report(t *testing.T, r result) map[string]any {
	t.Helper()
	i := strings.LastIndex(r.stdout, "\n{\n")
	s := r.stdout
	if i >= 0 {
		s = r.stdout[i+1:]
	} else if !strings.HasPrefix(s, "{") {
		t.Fatalf("no JSON result in stdout:\n%s", r.stdout)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("JSON result: %v\n%s", err, s)
	}
	return m
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// prefixWriter writes whole lines to w, each after prefix, so that two
// streams sharing one output stay readable; a line is cut at 64 KiB, and
// Flush writes a last partial one.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 && len(p.buf) >= 64<<10 {
			// A line this long is cut rather than held.
			p.buf, i = append(p.buf, '\n'), len(p.buf)
		}
		if i < 0 {
			break
		}
		if _, err := fmt.Fprintf(p.w, "%s%s", p.prefix, p.buf[:i+1]); err != nil {
			return len(b), err
		}
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

func (p *prefixWriter) Flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) > 0 {
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf)
		p.buf = nil
	}
}
