package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

// ember runs bin/ember with args and returns its output and exit status.
func ember(t testing.TB, limit time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.ember, args...)
	// On the deadline, ask ember to stop (it reports the outcome) before
	// killing it.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.code = ee.ExitCode()
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
		t.Fatalf("ember %s: still running after %s and interrupted (exit %d)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), limit, r.code, r.stdout, r.stderr)
	default:
		t.Fatalf("ember %s: %v (after %s)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, r.elapsed, r.stdout, r.stderr)
	}
	t.Logf("ember %s → %d in %s", strings.Join(args, " "), r.code, r.elapsed.Round(time.Millisecond))
	return r
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
