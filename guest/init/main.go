// Command ember-init is PID 1 inside ember's guests. It mounts the basic
// filesystems, loads the kernel modules the image carries, runs the command
// ember asked for (or a shell), reports its exit status to the host through
// ember's control port and ends the VM. Called as ember-info, poweroff,
// reboot or halt it does just that job.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

func lookPath(name string) (string, error) { return exec.LookPath(name) }

func main() {
	switch filepath.Base(os.Args[0]) {
	case "ember-info":
		if err := info(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "ember-info:", err)
			os.Exit(1)
		}
	case "sh":
		os.Exit(shMain(os.Args[1:]))
	case "poweroff", "halt", "reboot", "shutdown":
		// The VM's life ends either way; a clean status tells ember it was
		// asked for.
		openHost().exit(0)
	default:
		if os.Getpid() != 1 {
			fmt.Fprintln(os.Stderr, "ember-init: must run as PID 1 (as ember-info, poweroff or reboot it does those jobs)")
			os.Exit(2)
		}
		initMain()
	}
}
