package proto

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"strings"
)

// Archive is a small newc cpio holding RunFile (r as JSON). A VMM appends
// it to a cached initramfs; the kernel unpacks concatenated archives in
// order, so each run needs no new image.
//
// It is written here rather than with mkuimage's cpio package (which
// builds ember's images): that package brings regexp, lz4 and u-root's ls
// into every VMM process and the guest init, for three records of a fixed shape.
func Archive(r Run) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("run file: %w", err)
	}
	name := strings.TrimPrefix(RunFile, "/")
	var buf bytes.Buffer
	// Parent directories first, so the kernel can create the file.
	var dirs []string
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	ino := uint32(1)
	for _, d := range dirs {
		newcRecord(&buf, ino, newcDir|0o755, 2, d, nil)
		ino++
	}
	newcRecord(&buf, ino, newcFile|0o644, 1, name, b)
	newcRecord(&buf, 0, 0, 1, newcTrailer, nil)
	return buf.Bytes(), nil
}

// newc file types (cpio(5), the mode's S_IFMT bits) and the end marker.
const (
	newcDir     = 0o040000
	newcFile    = 0o100000
	newcTrailer = "TRAILER!!!"
)

// newcRecord appends one newc record: the "070701" magic and thirteen
// 8-digit hex fields (inode, mode, uid, gid, nlink, mtime, file size,
// device major and minor, rdev major and minor, name size with its NUL,
// checksum), the name and the data, each padded to 4 bytes.
func newcRecord(buf *bytes.Buffer, ino, mode, nlink uint32, name string, data []byte) {
	fmt.Fprintf(buf, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	buf.WriteString(name)
	buf.WriteByte(0)
	pad4(buf)
	buf.Write(data)
	pad4(buf)
}

func pad4(buf *bytes.Buffer) {
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
}
