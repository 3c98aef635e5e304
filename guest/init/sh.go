package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"mvdan.cc/sh/v3/interp"
	"mvdan.cc/sh/v3/syntax"
)

// shMain is /bin/sh: POSIX "sh -c COMMAND [NAME [ARG...]]" and "sh FILE"
// through the mvdan.cc/sh interpreter that u-root's gosh also uses (gosh
// itself has no -c); an interactive sh is gosh.
func shMain(args []string) int {
	if len(args) == 0 {
		gosh, err := exec.LookPath("gosh")
		if err == nil {
			err = syscall.Exec(gosh, []string{"gosh"}, os.Environ())
		}
		fmt.Fprintln(os.Stderr, "sh: an interactive shell is u-root's gosh:", err)
		return 127
	}
	var src, name string
	var params []string
	switch {
	case args[0] == "-c":
		if len(args) < 2 {
			fmt.Fprintln(os.Stderr, "sh: -c: option requires an argument")
			return 2
		}
		src, name = args[1], "sh"
		if len(args) > 2 {
			name, params = args[2], args[3:]
		}
	case strings.HasPrefix(args[0], "-"):
		fmt.Fprintf(os.Stderr, "sh: unsupported option %s (use sh -c COMMAND or sh FILE)\n", args[0])
		return 2
	default:
		b, err := os.ReadFile(args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, "sh:", err)
			return 127
		}
		src, name, params = string(b), args[0], args[1:]
	}
	prog, err := syntax.NewParser().Parse(strings.NewReader(src), name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sh:", err)
		return 2
	}
	r, err := interp.New(interp.StdIO(os.Stdin, os.Stdout, os.Stderr), interp.Params(append([]string{"--"}, params...)...))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sh:", err)
		return 2
	}
	err = r.Run(context.Background(), prog)
	if status, ok := interp.IsExitStatus(err); ok {
		return int(status)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sh:", err)
		return 1
	}
	if r.Exited() {
		return 0
	}
	return 0
}
