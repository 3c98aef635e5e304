package plan

import (
	"bytes"
	"testing"
)

func TestPrefixWriter(t *testing.T) {
	var out bytes.Buffer
	w, _, _ := ConsoleLog("", false, &out)
	for _, s := range []string{"[ 1.0] one\r\n[ 2.0] tw", "o\r\n", "\nlast"} {
		if n, err := w.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	want := "console: [ 1.0] one\r\nconsole: [ 2.0] two\r\nconsole: \nconsole: last"
	if out.String() != want {
		t.Fatalf("got %q, want %q", out.String(), want)
	}
}
