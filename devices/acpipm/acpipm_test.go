package acpipm

import "testing"

func TestS5PowersOffOnce(t *testing.T) {
	n := 0
	d := New(func() { n++ }, nil)
	d.Write(0, []byte{3<<2 | slpEN})     // S3: ignored
	d.Write(0, []byte{SleepTypeS5 << 2}) // no SLP_EN
	d.Write(1, []byte{SleepTypeS5<<2 | slpEN})
	if n != 0 {
		t.Fatal("powered off on a non-S5 or non-control write")
	}
	d.Write(0, []byte{SleepTypeS5<<2 | slpEN})
	d.Write(0, []byte{SleepTypeS5<<2 | slpEN})
	if n != 1 {
		t.Fatalf("powerOff called %d times", n)
	}
}
