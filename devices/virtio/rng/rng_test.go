package rng

import (
	"bytes"
	"testing"

	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/devices/virtio/virtiotest"
)

func TestEntropy(t *testing.T) {
	d := virtiotest.New(t, New(nil))
	d.Init(virtio.FeatureVersion1 | virtio.FeatureEventIdx)
	a := d.Do(0, virtiotest.Buf{WriteLen: 64}).Bytes()
	b := d.Do(0, virtiotest.Buf{WriteLen: 64}, virtiotest.Buf{WriteLen: 32}).Bytes()
	if len(a) != 64 || len(b) != 96 {
		t.Fatalf("got %d and %d bytes, want 64 and 96", len(a), len(b))
	}
	if bytes.Equal(a, make([]byte, 64)) || bytes.Equal(a, b[:64]) {
		t.Fatalf("not random: %x / %x", a, b)
	}
}

// A guest asking for more than a request's bound gets a short, filled read.
func TestBoundedRequest(t *testing.T) {
	src := bytes.NewReader(bytes.Repeat([]byte{0xab}, 1<<20))
	d := virtiotest.New(t, New(src))
	d.Init(virtio.FeatureVersion1)
	r := d.Do(0, virtiotest.Buf{WriteLen: 200 << 10})
	if r.Written != maxPerRequest {
		t.Fatalf("written %d, want %d", r.Written, maxPerRequest)
	}
	if !bytes.Equal(r.Bytes(), bytes.Repeat([]byte{0xab}, maxPerRequest)) {
		t.Fatal("short read not filled from the source")
	}
}
