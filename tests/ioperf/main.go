// Command ioperf runs inside a guest and measures a block device with
// direct I/O, the same way under every VMM it is compared on:
//
//	ioperf DEVICE MiB [OPS]
//
// It prints one line per pattern: "ioperf <pattern> <bytes> <ops> <ns>"
// for sequential write and read (1 MiB requests) and OPS (default 4096)
// random 4 KiB writes and reads over the first MiB mebibytes.
package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) != 3 && len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: ioperf DEVICE MiB [OPS]")
		os.Exit(2)
	}
	randOps := 4096
	if len(os.Args) == 4 {
		if n, err := strconv.Atoi(os.Args[3]); err == nil && n > 0 {
			randOps = n
		}
	}
	mib, err := strconv.Atoi(os.Args[2])
	if err != nil || mib < 1 {
		fmt.Fprintln(os.Stderr, "ioperf: bad size")
		os.Exit(2)
	}
	fd, err := unix.Open(os.Args[1], unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ioperf:", err)
		os.Exit(1)
	}
	// O_DIRECT wants aligned buffers: an anonymous mapping is page-aligned.
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ioperf:", err)
		os.Exit(1)
	}
	for i := range buf {
		buf[i] = byte(i)
	}
	size := int64(mib) << 20
	r := rand.New(rand.NewPCG(1, 2))
	run := func(name string, ops int, n int, off func(int) int64, write bool) {
		start := time.Now()
		for i := 0; i < ops; i++ {
			var err error
			if write {
				_, err = unix.Pwrite(fd, buf[:n], off(i))
			} else {
				_, err = unix.Pread(fd, buf[:n], off(i))
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "ioperf:", name, err)
				os.Exit(1)
			}
		}
		if write {
			_ = unix.Fsync(fd)
		}
		fmt.Printf("ioperf %s %d %d %d\n", name, int64(ops)*int64(n), ops, time.Since(start).Nanoseconds())
	}
	run("seqwrite", mib, 1<<20, func(i int) int64 { return int64(i) << 20 }, true)
	run("seqread", mib, 1<<20, func(i int) int64 { return int64(i) << 20 }, false)
	run("randwrite", randOps, 4096, func(int) int64 { return r.Int64N(size/4096) * 4096 }, true)
	run("randread", randOps, 4096, func(int) int64 { return r.Int64N(size/4096) * 4096 }, false)
}
