package ninep

import (
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/ember-vmm/ember/devices/virtio"
)

// msg builds a 9P message: size, type, tag, then the fields (uint8,
// uint16, uint32, uint64 or string, 9P's length-prefixed form).
func msg(typ uint8, tag uint16, fields ...any) []byte {
	b := []byte{0, 0, 0, 0, typ, byte(tag), byte(tag >> 8)}
	for _, f := range fields {
		switch v := f.(type) {
		case uint8:
			b = append(b, v)
		case uint16:
			b = binary.LittleEndian.AppendUint16(b, v)
		case uint32:
			b = binary.LittleEndian.AppendUint32(b, v)
		case uint64:
			b = binary.LittleEndian.AppendUint64(b, v)
		case string:
			b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
			b = append(b, v...)
		}
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)))
	return b
}

// seedRequests are a session's usual first requests, and some that try
// to leave the share.
func seedRequests() [][]byte {
	const noFID = ^uint32(0)
	return [][]byte{
		msg(100, 0xffff, uint32(8192), "9P2000.L"),                                                   // Tversion
		msg(104, 1, uint32(1), noFID, "root", "", uint32(0)),                                         // Tattach
		msg(110, 2, uint32(1), uint32(2), uint16(1), "hello"),                                        // Twalk
		msg(110, 3, uint32(1), uint32(3), uint16(2), "..", "etc"),                                    // Twalk out
		msg(24, 4, uint32(2), uint64(0x3fff)),                                                        // Tgetattr
		msg(12, 5, uint32(2), uint32(2)),                                                             // Tlopen O_RDWR
		msg(116, 6, uint32(2), uint64(0), uint32(4096)),                                              // Tread
		msg(118, 7, uint32(2), uint64(0), uint32(4), uint8('d'), uint8('a'), uint8('t'), uint8('a')), // Twrite
		msg(14, 8, uint32(1), "new", uint32(0o102), uint32(0o644), uint32(0)),                        // Tlcreate
		msg(40, 9, uint32(1), uint64(0), uint32(4096)),                                               // Treaddir
		msg(120, 10, uint32(2)),                                                                      // Tclunk
	}
}

func FuzzRequest(f *testing.F) {
	for _, s := range seedRequests() {
		f.Add(s)
	}
	dir := f.TempDir()
	os.WriteFile(filepath.Join(dir, "hello"), []byte("hello"), 0o644)
	dev, err := Open(Options{Tag: "fuzz", Dir: dir}, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	dev.in, dev.out = make([]byte, maxMessage), make([]byte, maxMessage)
	s := dev.startSession()
	out := make([]byte, 8192)
	for _, m := range seedRequests()[:3] {
		dev.serve(s, virtio.NewChain([][]byte{m}, [][]byte{out}))
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		done := make(chan uint32, 1)
		go func() { done <- dev.serve(s, virtio.NewChain([][]byte{req}, [][]byte{out})) }()
		select {
		case n := <-done:
			if int(n) > len(out) {
				t.Fatalf("wrote %d bytes into %d", n, len(out))
			}
		case <-time.After(10 * time.Second):
			stacks := make([]byte, 1<<20)
			t.Fatalf("request %x got no answer in 10s:\n%s", req, stacks[:runtime.Stack(stacks, true)])
		}
	})
}
