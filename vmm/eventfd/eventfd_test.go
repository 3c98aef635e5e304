package eventfd

import (
	"errors"
	"os"
	"testing"
	"time"
)

func TestSignalWait(t *testing.T) {
	e, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for i := 0; i < 3; i++ {
		if err := e.Signal(); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := e.Wait(); err != nil || n != 3 {
		t.Fatalf("Wait = %d, %v; want 3", n, err)
	}
}

// TestCloseWakesWait: a reader blocked in Wait returns once the owner
// closes the eventfd, so no goroutine can be left waiting forever.
func TestCloseWakesWait(t *testing.T) {
	e, err := New()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := e.Wait(); done <- err }()
	time.Sleep(20 * time.Millisecond)
	e.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("Wait after Close = %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait still blocked after Close")
	}
}
