package hostio

import (
	"strings"
	"testing"
)

func TestTail(t *testing.T) {
	tl := &Tail{Max: 8}
	tl.Write([]byte("abc"))
	if tl.String() != "abc" {
		t.Fatalf("%q", tl.String())
	}
	var all strings.Builder
	all.WriteString("abc")
	for i := range 10 {
		s := strings.Repeat(string(rune('0'+i)), 3)
		tl.Write([]byte(s))
		all.WriteString(s)
	}
	want := all.String()[all.Len()-8:]
	if got := tl.String(); got != want {
		t.Fatalf("last 8 bytes: %q, want %q", got, want)
	}
}
