// Command ember-init is PID 1 inside ember's guests. It mounts the basic
// filesystems, loads the kernel modules the image carries, runs the command
// ember asked for (or a shell), reports its exit status to the host through
// ember's control port and ends the VM. With proto.Run.Nested set it is the
// L1 host of --accel nested instead. Called as ember-info, ember-vsock,
// sh, poweroff, reboot, halt or shutdown it does just that job.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

func main() {
	// I/O port permission (ioperm) belongs to one OS thread: keep every
	// port access on the thread that asked for it.
	runtime.LockOSThread()
	switch name := filepath.Base(os.Args[0]); name {
	case "ember-info":
		if err := writeInfo(os.Stdout, gatherFacts()); err != nil {
			fmt.Fprintln(os.Stderr, "ember-info:", err)
			os.Exit(1)
		}
	case "sh":
		os.Exit(shMain(os.Args[1:]))
	case "ember-vsock":
		os.Exit(vsockMain(os.Args[1:]))
	case "poweroff", "halt", "reboot", "shutdown":
		// Flags (-f, -n, now...) change nothing: the VM's life ends either
		// way, and status 0 tells ember it was asked for.
		openHost().end(0, name == "reboot")
	default:
		// Init mode powers the machine off at the end: never outside PID 1,
		// whatever the name.
		if os.Getpid() != 1 {
			fmt.Fprintln(os.Stderr, "ember-init: must run as PID 1 (as ember-info, sh, poweroff or reboot it does those jobs)")
			os.Exit(2)
		}
		initMain()
	}
}
