package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The heartbeat writes its byte at the port's offset of the device, once
// a second.
func TestHeartbeat(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "port")
	if err := os.WriteFile(dev, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	go heartbeat(dev, 0x4f0)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(dev); len(b) == 0x4f1 && b[0x4f0] == '.' {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(dev)
	t.Fatalf("no heartbeat byte at offset 0x4f0 (device holds %d bytes)", len(b))
}
