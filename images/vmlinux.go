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

	"github.com/ember-vmm/ember/boot/elf64"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// maxVmlinux bounds decompression so a hostile file cannot fill the disk.
const maxVmlinux = 512 << 20

// Vmlinux returns the ELF vmlinux inside k's bzImage, extracting it on
// first use. Debian's kernels are built with CONFIG_PVH, so ember can boot
// it through the PVH entry point.
func (c *Cache) Vmlinux(ctx context.Context, k *Kernel) (string, error) {
	out := filepath.Join(filepath.Dir(k.Path), "vmlinux")
	ok := func() bool { return checkSum(out, c.Verify) == nil && isELF(out) }
	if ok() {
		return out, nil
	}
	unlock, err := c.lock(ctx, "vmlinux-"+k.Version)
	if err != nil {
		return "", err
	}
	defer unlock()
	if ok() {
		return out, nil
	}
	_ = os.Remove(sumPath(out))
	bz, err := os.ReadFile(k.Path)
	if err != nil {
		return "", err
	}
	err = c.step("extracting vmlinux from "+k.Version, func() error {
		return writeAtomic(out, func(w io.Writer) error { return ExtractVmlinux(ctx, bz, w) })
	})
	if err != nil {
		return "", fmt.Errorf("%s: %w", k.Path, err)
	}
	return out, recordSum(out)
}

// isELF reports whether path is an ELF64 file whose headers are sound; it
// reads only the headers.
func isELF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return false
	}
	_, err = elf64.Open(f, st.Size())
	return err == nil
}

// Setup header fields (Documentation/arch/x86/boot.rst, "The Real-Mode
// Kernel Header"; offsets from the start of the bzImage).
const (
	hdrSetupSects    = 0x1f1 // u8: 512-byte setup sectors after the boot sector (0 means 4)
	hdrMagic         = 0x202 // "HdrS"
	hdrVersion       = 0x206 // u16 boot protocol version
	hdrPayloadOffset = 0x248 // u32, protocol 2.08+: payload start, relative to the protected-mode code
	hdrPayloadLength = 0x24c // u32, protocol 2.08+
	hdrEnd           = 0x250
)

// Compression magics of the payload (the kernel's lib/decompress_*.c).
var (
	magicXZ    = []byte{0xfd, '7', 'z', 'X', 'Z', 0}
	magicLZ4   = []byte{0x02, 0x21, 0x4c, 0x18} // legacy LZ4 frame (lz4 -l)
	magicGzip  = []byte{0x1f, 0x8b}
	magicZstd  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicELF   = []byte{0x7f, 'E', 'L', 'F'}
	errNotELF  = errors.New("bzImage payload is not an ELF vmlinux")
	errTooLong = fmt.Errorf("decompressed kernel larger than %d MiB", maxVmlinux>>20)
)

// bzPayload returns the compressed kernel inside a bzImage: payload_length
// bytes at payload_offset past the real-mode setup code.
func bzPayload(bz []byte) ([]byte, error) {
	if len(bz) < hdrEnd || string(bz[hdrMagic:hdrMagic+4]) != "HdrS" {
		return nil, errors.New("not a bzImage (no HdrS setup header)")
	}
	if v := binary.LittleEndian.Uint16(bz[hdrVersion:]); v < 0x208 {
		return nil, fmt.Errorf("bzImage boot protocol %d.%02d has no payload fields (2.08+ needed)", v>>8, v&0xff)
	}
	sects := uint64(bz[hdrSetupSects])
	if sects == 0 {
		sects = 4
	}
	off := (sects+1)*512 + uint64(binary.LittleEndian.Uint32(bz[hdrPayloadOffset:]))
	n := uint64(binary.LittleEndian.Uint32(bz[hdrPayloadLength:]))
	if n < 4 || off+n > uint64(len(bz)) {
		return nil, fmt.Errorf("bzImage payload [%#x, +%#x) outside the %d-byte file", off, n, len(bz))
	}
	return bz[off : off+n], nil
}

// ExtractVmlinux decompresses the payload of a bzImage into w. The method
// is found by magic: xz, legacy LZ4, gzip, zstd, or an uncompressed ELF.
func ExtractVmlinux(ctx context.Context, bz []byte, w io.Writer) error {
	p, err := bzPayload(bz)
	if err != nil {
		return err
	}
	if bytes.HasPrefix(p, magicXZ) {
		// Kernels use XZ's x86 BCJ filter, which github.com/ulikunitz/xz
		// does not implement; xz-utils (in every Debian base system) does.
		return xzCommand(ctx, p, w)
	}
	return decompressPayload(p, w)
}

// decompressPayload handles the methods Go decoders cover.
func decompressPayload(p []byte, w io.Writer) error {
	var r io.Reader
	var err error
	switch {
	case bytes.HasPrefix(p, magicLZ4):
		r = newLegacyLZ4Reader(p)
	case bytes.HasPrefix(p, magicGzip):
		r, err = gzip.NewReader(bytes.NewReader(p))
	case bytes.HasPrefix(p, magicZstd):
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(p), zstd.WithDecoderMaxMemory(maxVmlinux), zstd.WithDecoderConcurrency(1))
		if err == nil {
			defer d.Close()
			r = d
		}
	case bytes.HasPrefix(p, magicELF):
		r = bytes.NewReader(p)
	default:
		return fmt.Errorf("bzImage payload compressed with an unsupported method (magic % x)", p[:4])
	}
	if err != nil {
		return fmt.Errorf("bzImage payload: %w", err)
	}
	var head [4]byte
	br := io.LimitReader(r, maxVmlinux+1)
	if _, err := io.ReadFull(br, head[:]); err != nil {
		return fmt.Errorf("bzImage payload: %w", noEOF(err))
	}
	if !bytes.Equal(head[:], magicELF) {
		return errNotELF
	}
	if _, err := w.Write(head[:]); err != nil {
		return err
	}
	// The kernel's payload may carry trailing bytes after the stream (the
	// build appends the uncompressed size): what matters is the ELF.
	n, err := io.Copy(w, br)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("bzImage payload: %w", err)
	}
	if n+4 > maxVmlinux {
		return errTooLong
	}
	return nil
}

func xzCommand(ctx context.Context, p []byte, w io.Writer) error {
	var head headCheck
	cmd := exec.CommandContext(ctx, "xz", "--decompress", "--stdout", "--single-stream", "--quiet")
	cmd.Stdin = bytes.NewReader(p)
	cmd.Stdout = io.MultiWriter(&head, &limitWriter{w: w, n: maxVmlinux})
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("bzImage payload: xz: %v %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	if !bytes.HasPrefix(head.b, []byte{0x7f, 'E', 'L', 'F'}) {
		return errNotELF
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
		return 0, errTooLong
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}

// Legacy LZ4 frame (lz4 -l, as the kernel's lib/decompress_unlz4.c reads
// it): the magic, then blocks, each a little-endian u32 compressed size and
// an LZ4 block inflating to at most 8 MiB. The kernel build appends the
// uncompressed size as 4 more bytes, which reads as a block size larger
// than what is left: that ends the stream.
const (
	lz4LegacyBlock    = 8 << 20
	lz4LegacyMaxInput = lz4LegacyBlock + lz4LegacyBlock/255 + 16 // LZ4_compressBound
)

type legacyLZ4Reader struct {
	in  []byte // after the magic
	out []byte // inflated, not yet read
	buf []byte
	err error
}

func newLegacyLZ4Reader(p []byte) *legacyLZ4Reader {
	return &legacyLZ4Reader{in: p[len(magicLZ4):]}
}

func (l *legacyLZ4Reader) Read(p []byte) (int, error) {
	for len(l.out) == 0 {
		if l.err != nil {
			return 0, l.err
		}
		l.next()
	}
	n := copy(p, l.out)
	l.out = l.out[n:]
	return n, nil
}

// next inflates one block into out, or sets err.
func (l *legacyLZ4Reader) next() {
	if len(l.in) < 4 {
		l.err = io.EOF
		return
	}
	n := uint64(binary.LittleEndian.Uint32(l.in))
	switch {
	case bytes.Equal(l.in[:4], magicLZ4): // concatenated stream
		l.in = l.in[4:]
		return
	case n > uint64(len(l.in)-4):
		l.err = io.EOF // the appended size, or a truncated stream
		return
	case n > lz4LegacyMaxInput || n == 0:
		l.err = fmt.Errorf("legacy LZ4: bad block size %d", n)
		return
	}
	if l.buf == nil {
		l.buf = make([]byte, lz4LegacyBlock)
	}
	m, err := lz4.UncompressBlock(l.in[4:4+n], l.buf)
	if err != nil {
		l.err = fmt.Errorf("legacy LZ4: %w", err)
		return
	}
	l.in = l.in[4+n:]
	l.out = l.buf[:m]
}
