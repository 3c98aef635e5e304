package hostio

import (
	"io"
	"os"
	"testing"
	"time"
)

// TestInputCloseWakesRead: a Read blocked on an empty pipe returns io.EOF
// once the input is closed, and the pipe itself stays usable.
func TestInputCloseWakesRead(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	in := NewInput(r)
	if in.own == nil {
		t.Fatal("a pipe was not reopened")
	}
	got := make(chan error, 1)
	go func() {
		_, err := in.Read(make([]byte, 16))
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	in.Close()
	select {
	case err := <-got:
		if err != io.EOF {
			t.Fatalf("Read after Close = %v, want io.EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
	// The original descriptor was not closed or made non-blocking.
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := r.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("original pipe: %q %v", b, err)
	}
}

func TestInputReadsData(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	in := NewInput(r)
	defer in.Close()
	go func() { w.Write([]byte("hello")); w.Close() }()
	b, err := io.ReadAll(in)
	if err != nil || string(b) != "hello" {
		t.Fatalf("ReadAll = %q, %v", b, err)
	}
}

// TestOutputDeadline: a write to a full pipe nobody reads returns once its
// deadline passes.
func TestOutputDeadline(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	out := Output(w)
	if out == w {
		t.Fatal("a pipe was not reopened")
	}
	defer out.Close()
	if err := out.SetWriteDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := out.Write(make([]byte, 1<<20))
		done <- err
	}()
	select {
	case err := <-done:
		if !os.IsTimeout(err) {
			t.Fatalf("Write = %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Write still blocked after its deadline")
	}
}

func TestRegularFilesPassThrough(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if Output(f) != f {
		t.Fatal("a regular file was reopened")
	}
	if in := NewInput(f); in.own != nil {
		t.Fatal("a regular file was reopened for input")
	}
}
