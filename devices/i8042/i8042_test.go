package i8042

import "testing"

func TestProbeAndReset(t *testing.T) {
	resets := 0
	c := New(func() { resets++ }, nil)
	cmd, data := c.Command(), c.Data()
	rd := func(d interface{ Read(uint64, []byte) }) byte { b := []byte{0}; d.Read(0, b); return b[0] }

	cmd.Write(0, []byte{cmdSelfTest})
	if rd(cmd)&statusOBF == 0 || rd(data) != 0x55 {
		t.Fatal("self test")
	}
	if rd(cmd)&statusOBF != 0 {
		t.Fatal("output buffer still full")
	}
	cmd.Write(0, []byte{cmdWriteCTR})
	data.Write(0, []byte{0x65})
	cmd.Write(0, []byte{cmdReadCTR})
	if rd(data) != 0x65 {
		t.Fatal("command byte round trip")
	}
	if resets != 0 {
		t.Fatal("reset too early")
	}
	cmd.Write(0, []byte{cmdReset})
	if resets != 1 {
		t.Fatalf("resets = %d", resets)
	}
}

func FuzzController(f *testing.F) {
	f.Add([]byte{0xaa, 0x00, 0x60, 0x01, 0x20, 0x00})
	f.Fuzz(func(t *testing.T, ops []byte) {
		c := New(func() {}, nil)
		for i, b := range ops {
			d := []byte{b, b, b, b}[:1+i%4]
			switch i % 4 {
			case 0:
				c.Command().Write(0, d)
			case 1:
				c.Data().Write(0, d)
			case 2:
				c.Command().Read(0, d)
			default:
				c.Data().Read(0, d)
			}
		}
	})
}
