package images

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// maxVmlinux bounds decompression so a hostile file cannot fill the disk.
const maxVmlinux = 512 << 20

// Vmlinux returns the ELF vmlinux inside k's bzImage (cached). Debian's
// kernels are built with CONFIG_PVH, so it boots through the PVH entry.
func (c *Cache) Vmlinux(ctx context.Context, k *Kernel) (string, error) {
	out := filepath.Join(filepath.Dir(k.Path), "vmlinux")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	bz, err := os.ReadFile(k.Path)
	if err != nil {
		return "", err
	}
	err = c.step("extracting vmlinux from "+k.Version, func() error {
		return writeAtomic(out, func(w io.Writer) error { return ExtractVmlinux(bz, w) })
	})
	return out, err
}

// ExtractVmlinux decompresses the payload of a bzImage (setup header
// payload_offset/payload_length, boot protocol 2.08+) into w.
func ExtractVmlinux(bz []byte, w io.Writer) error {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return errors.New("not a bzImage")
	}
	sects := int(bz[0x1f1])
	if sects == 0 {
		sects = 4
	}
	off := uint64((sects+1)*512) + uint64(binary.LittleEndian.Uint32(bz[0x248:]))
	n := uint64(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off+n > uint64(len(bz)) || n < 4 {
		return errors.New("bzImage payload outside the file")
	}
	p := bz[off : off+n]
	var r io.Reader
	var err error
	switch {
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		// Kernels use XZ's x86 BCJ filter, which github.com/ulikunitz/xz
		// does not implement; xz-utils (in every Debian base system) does.
		return xzCommand(p, w)
	case bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}):
		r = lz4.NewReader(bytes.NewReader(p))
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		r, err = gzip.NewReader(bytes.NewReader(p))
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(p))
		if err == nil {
			defer d.Close()
			r = d
		}
	case bytes.HasPrefix(p, []byte{0x7f, 'E', 'L', 'F'}):
		r = bytes.NewReader(p)
	default:
		return fmt.Errorf("bzImage payload compressed with an unsupported method (magic % x)", p[:4])
	}
	if err != nil {
		return fmt.Errorf("bzImage payload: %w", err)
	}
	var head [4]byte
	br := io.LimitReader(r, maxVmlinux)
	if _, err := io.ReadFull(br, head[:]); err != nil {
		return fmt.Errorf("bzImage payload: %w", err)
	}
	if !bytes.Equal(head[:], []byte{0x7f, 'E', 'L', 'F'}) {
		return errors.New("bzImage payload is not an ELF vmlinux")
	}
	if _, err := w.Write(head[:]); err != nil {
		return err
	}
	// The kernel's payload may carry trailing bytes after the stream; a
	// short read at the end is fine once the ELF is out.
	if _, err := io.Copy(w, br); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("bzImage payload: %w", err)
	}
	return nil
}

func xzCommand(p []byte, w io.Writer) error {
	var head headCheck
	cmd := exec.Command("xz", "--decompress", "--stdout", "--single-stream", "--quiet")
	cmd.Stdin = bytes.NewReader(p)
	cmd.Stdout = io.MultiWriter(&head, &limitWriter{w: w, n: maxVmlinux})
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("bzImage payload: xz: %v %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	if !bytes.HasPrefix(head.b, []byte{0x7f, 'E', 'L', 'F'}) {
		return errors.New("bzImage payload is not an ELF vmlinux")
	}
	return nil
}

// headCheck keeps the first bytes written.
type headCheck struct{ b []byte }

func (h *headCheck) Write(p []byte) (int, error) {
	if len(h.b) < 4 {
		h.b = append(h.b, p[:min(len(p), 4-len(h.b))]...)
	}
	return len(p), nil
}

// limitWriter fails once more than n bytes were written.
type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		return 0, errors.New("decompressed kernel larger than 512 MiB")
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}
