package boot

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ember-vmm/ember/boot/elf64"
	"golang.org/x/sys/unix"
)

// MaxKernelFile bounds a kernel file's size. Only the parts booting needs
// are read (headers, notes, loadable segments), but a file this large is
// no kernel: Debian's bzImages are under 10 MiB, an ELF vmlinux with full
// debug information under 1 GiB.
const MaxKernelFile = 2 << 30

// Kernel is a kernel file whose headers have been read and validated. Its
// bytes are copied into guest memory only by Load, straight from the file.
type Kernel struct {
	// Name names the kernel in errors (normally its path).
	Name     string
	Protocol Protocol
	r        io.ReaderAt
	size     int64
	closer   io.Closer
	bz       *setup     // Linux64
	elf      *elfKernel // PVH
}

// OpenKernel opens path and validates it as a bzImage or an ELF vmlinux,
// reading only its headers. The error names the file.
func OpenKernel(path string) (*Kernel, error) {
	// O_NONBLOCK: a FIFO given as a kernel must not hang the open.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("kernel %s: not a regular file", path)
	}
	k, err := ParseKernel(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	k.closer = f
	return k, nil
}

// ParseKernel validates the size-byte kernel file r (named name in
// errors), reading only its headers.
func ParseKernel(r io.ReaderAt, size int64, name string) (*Kernel, error) {
	k := &Kernel{Name: name, r: r, size: size}
	if size > MaxKernelFile {
		return nil, fmt.Errorf("kernel %s: %w", name, errorf(ErrUnsupported, "%d MiB is larger than any kernel (at most %d MiB)", size>>20, MaxKernelFile>>20))
	}
	var magic [4]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("kernel %s: %w", name, err)
	}
	var err error
	if elf64.IsELF(magic[:]) {
		k.Protocol = PVH
		k.elf, err = parseELF(r, size)
	} else {
		k.Protocol = Linux64
		k.bz, err = parseSetup(r, size)
	}
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", name, err)
	}
	return k, nil
}

// Size is the kernel file's size.
func (k *Kernel) Size() int64 { return k.size }

// Close closes the file OpenKernel opened. Safe to call twice.
func (k *Kernel) Close() error {
	if k.closer == nil {
		return nil
	}
	c := k.closer
	k.closer = nil
	return c.Close()
}
