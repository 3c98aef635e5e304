package launch

import (
	"testing"

	"github.com/ember-vmm/ember/configs"
)

func TestOwnInitRunsNoDefaultCommand(t *testing.T) {
	for _, c := range []struct {
		initrd  string
		command []string
		want    bool
	}{
		{"default", nil, false},
		{"/tmp/my.cpio", nil, true},
		{"none", nil, true},
		{"/tmp/my.cpio", []string{"/bin/mytest"}, false},
	} {
		cfg := configs.Default()
		cfg.Boot.Initrd = c.initrd
		if c.command != nil {
			cfg.Run.Command = c.command
		}
		if got := ownInit(cfg); got != c.want {
			t.Errorf("initrd %q command %v: ownInit %v, want %v", c.initrd, c.command, got, c.want)
		}
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
