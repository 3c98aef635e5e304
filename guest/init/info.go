package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// facts are what ember-info prints. Zero means unknown.
type facts struct {
	kernel string
	cpus   int
	memMiB int
	bootMS int64
}

// writeInfo prints one fact a line in a fixed format that tests grep:
//
//	kernel: 6.1.0-56-cloud-amd64
//	cpus: 2
//	memory: 512 MiB
//	boot: 312 ms to init
func writeInfo(w io.Writer, f facts) error {
	kernel := f.kernel
	if kernel == "" {
		kernel = "unknown"
	}
	_, err := fmt.Fprintf(w, "kernel: %s\ncpus: %d\nmemory: %d MiB\nboot: %d ms to init\n",
		kernel, f.cpus, f.memMiB, f.bootMS)
	return err
}

// gatherFacts reads the running guest's facts. The boot time is init's
// CLOCK_BOOTTIME at start when init passed it down, else the uptime now.
func gatherFacts() facts {
	var f facts
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		f.kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil {
		f.cpus = countCPUList(string(b))
	}
	if f.cpus == 0 {
		f.cpus = runtime.NumCPU()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f.memMiB = memTotalKB(string(b)) / 1024
	}
	if ns, err := strconv.ParseInt(os.Getenv(bootTimeEnv), 10, 64); err == nil && ns > 0 {
		f.bootMS = ns / 1e6
	} else if b, err := os.ReadFile("/proc/uptime"); err == nil {
		f.bootMS = uptimeMS(string(b))
	}
	return f
}

// countCPUList counts a kernel CPU list such as "0-3,6"; malformed parts
// count as nothing.
func countCPUList(s string) int {
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b-a > 1<<20 {
				continue
			}
		}
		n += b - a + 1
	}
	return n
}

// memTotalKB finds MemTotal in /proc/meminfo's text (kB); 0 if absent.
func memTotalKB(meminfo string) int {
	for _, l := range strings.Split(meminfo, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			if kb, err := strconv.Atoi(f[1]); err == nil && kb > 0 {
				return kb
			}
		}
	}
	return 0
}

// uptimeMS reads the first field of /proc/uptime ("12.34 5.67") as ms.
func uptimeMS(s string) int64 {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0
	}
	sec, err := strconv.ParseFloat(f[0], 64)
	if err != nil || !(sec >= 0 && sec <= 1e12) { // also NaN
		return 0
	}
	return int64(sec * 1000)
}
