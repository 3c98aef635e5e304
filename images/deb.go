package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// A Debian package (deb(5)) is an ar(5) archive: the global magic, then
// members, each a 60-byte ASCII header followed by its data padded to an
// even length. Header fields (offsets in bytes):
//
//	 0 name[16]  16 mtime[12]  28 uid[6]  34 gid[6]  40 mode[8]
//	48 size[10]  58 fmag[2] = "`\n"
//
// Only the subset dpkg writes is needed: short names (GNU style may end in
// '/'), no symbol table or long-name table.
const (
	arMagic      = "!<arch>\n"
	arHeaderSize = 60
	arNameOff    = 0
	arNameLen    = 16
	arSizeOff    = 48
	arSizeLen    = 10
	arFmagOff    = 58
	arFmag       = "`\n"
)

// arReader reads the members of an ar archive in order.
type arReader struct {
	r      io.Reader
	remain int64 // unread bytes of the current member
	pad    int64 // padding byte after the current member
}

// newArReader checks the archive magic.
func newArReader(r io.Reader) (*arReader, error) {
	var m [len(arMagic)]byte
	if _, err := io.ReadFull(r, m[:]); err != nil || string(m[:]) != arMagic {
		return nil, errors.New("not an ar archive (Debian package): bad magic")
	}
	return &arReader{r: r}, nil
}

// Next skips to the next member and returns its name and size; io.EOF at
// the end of the archive.
func (a *arReader) Next() (string, int64, error) {
	if _, err := io.CopyN(io.Discard, a.r, a.remain+a.pad); err != nil {
		return "", 0, fmt.Errorf("ar: truncated member: %w", noEOF(err))
	}
	a.remain, a.pad = 0, 0
	var h [arHeaderSize]byte
	n, err := io.ReadFull(a.r, h[:])
	if n == 0 && errors.Is(err, io.EOF) {
		return "", 0, io.EOF
	}
	if err != nil {
		return "", 0, fmt.Errorf("ar: truncated header: %w", noEOF(err))
	}
	if string(h[arFmagOff:arFmagOff+2]) != arFmag {
		return "", 0, errors.New("ar: bad member header")
	}
	name := strings.TrimRight(string(h[arNameOff:arNameOff+arNameLen]), " ")
	name = strings.TrimSuffix(name, "/")
	size, err := strconv.ParseInt(strings.TrimRight(string(h[arSizeOff:arSizeOff+arSizeLen]), " "), 10, 64)
	if err != nil || size < 0 {
		return "", 0, fmt.Errorf("ar: member %q: bad size", name)
	}
	a.remain, a.pad = size, size&1
	return name, size, nil
}

// Read reads the current member's data.
func (a *arReader) Read(p []byte) (int, error) {
	if a.remain <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > a.remain {
		p = p[:a.remain]
	}
	n, err := a.r.Read(p)
	a.remain -= int64(n)
	if errors.Is(err, io.EOF) && a.remain > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// debData finds the data.tar member of a Debian package and returns a
// reader of the uncompressed tar stream. close releases decoder state.
func debData(r io.Reader) (tr *tar.Reader, closeFn func(), err error) {
	a, err := newArReader(r)
	if err != nil {
		return nil, nil, err
	}
	for {
		name, _, err := a.Next()
		if errors.Is(err, io.EOF) {
			return nil, nil, errors.New("Debian package has no data.tar member")
		}
		if err != nil {
			return nil, nil, err
		}
		if !strings.HasPrefix(name, "data.tar") {
			continue
		}
		br := bufio.NewReaderSize(a, 1<<20)
		switch name {
		case "data.tar":
			return tar.NewReader(br), func() {}, nil
		case "data.tar.xz":
			// Package payloads use plain LZMA2 (no branch filter), which
			// the pure-Go decoder handles.
			xr, err := xz.NewReader(br)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", name, err)
			}
			return tar.NewReader(xr), func() {}, nil
		case "data.tar.zst":
			zr, err := zstd.NewReader(br)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", name, err)
			}
			return tar.NewReader(zr), zr.Close, nil
		case "data.tar.gz":
			gr, err := gzip.NewReader(br)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", name, err)
			}
			return tar.NewReader(gr), func() {}, nil
		default:
			return nil, nil, fmt.Errorf("Debian package member %s: unsupported compression", name)
		}
	}
}

// cleanTarPath turns a tar entry name ("./boot/x") into a relative path
// that cannot leave the extraction root.
func cleanTarPath(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// decompressModule returns a kernel module's ELF bytes, decompressing
// .ko.xz, .ko.zst and .ko.gz (init loads them with finit_module and no
// decompression flag), and the name without the compression suffix.
func decompressModule(name string, b []byte) (string, []byte, error) {
	var r io.Reader
	switch {
	case strings.HasSuffix(name, ".ko"):
		return name, b, nil
	case strings.HasSuffix(name, ".ko.xz"):
		xr, err := xz.NewReader(bytes.NewReader(b))
		if err != nil {
			return "", nil, fmt.Errorf("%s: %w", name, err)
		}
		r = xr
	case strings.HasSuffix(name, ".ko.zst"):
		zr, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			return "", nil, fmt.Errorf("%s: %w", name, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(name, ".ko.gz"):
		gr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return "", nil, fmt.Errorf("%s: %w", name, err)
		}
		r = gr
	default:
		return "", nil, fmt.Errorf("%s: not a kernel module", name)
	}
	out, err := io.ReadAll(io.LimitReader(r, maxModule+1))
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(out) > maxModule {
		return "", nil, fmt.Errorf("%s: larger than %d MiB uncompressed", name, maxModule>>20)
	}
	return name[:strings.LastIndex(name, ".ko")+3], out, nil
}

// maxModule bounds one kernel module (the largest Debian ships is ~20 MiB).
const maxModule = 128 << 20
