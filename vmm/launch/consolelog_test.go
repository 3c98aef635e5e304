package launch

import (
	"bytes"
	"testing"

	"github.com/ember-vmm/ember/configs"
)

func TestPrefixWriter(t *testing.T) {
	var out bytes.Buffer
	w, _, _ := consoleLog("", false, &out)
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

func TestKernelCmdline(t *testing.T) {
	if got := kernelCmdline(configs.Boot{Cmdline: "quiet", PanicOnWarn: true}); got != "quiet panic_on_warn=1 oops=panic" {
		t.Fatalf("panic on warn: %q", got)
	}
	if got := kernelCmdline(configs.Boot{Cmdline: "quiet"}); got != "quiet" {
		t.Fatalf("plain: %q", got)
	}
}
