package launch

import (
	"io"
	"strings"
	"testing"
)

func TestEscapeReader(t *testing.T) {
	quit := 0
	r := NewEscapeReader(strings.NewReader("ab\x01\x01c\x01qd\x01xafter"), func() { quit++ })
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "ab\x01cqd" || quit != 1 {
		t.Fatalf("read %q, quit %d; want \"ab\\x01cqd\" and one quit", got, quit)
	}
}

func TestHasVirtFlag(t *testing.T) {
	for in, want := range map[string]bool{
		"processor: 0\nflags\t\t: fpu vme svm lm\n": true,
		"flags\t\t: fpu vmx\n":                      true,
		"flags\t\t: fpu hypervisor svm_lock\n":      false,
		"model name: x\n":                           false,
	} {
		if got := hasVirtFlag([]byte(in)); got != want {
			t.Errorf("hasVirtFlag(%q) = %v", in, got)
		}
	}
}
