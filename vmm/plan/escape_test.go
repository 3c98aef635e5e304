package plan

import (
	"io"
	"strings"
	"testing"
)

func TestEscapeReader(t *testing.T) {
	quit := 0
	r := NewEscapeReader(io.NopCloser(strings.NewReader("ab\x01\x01c\x01qd\x01xafter")), func() { quit++ })
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "ab\x01cqd" || quit != 1 {
		t.Fatalf("read %q, quit %d; want \"ab\\x01cqd\" and one quit", got, quit)
	}
}
