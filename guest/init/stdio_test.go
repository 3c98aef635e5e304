package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFindPorts(t *testing.T) {
	root := t.TempDir()
	for dev, name := range map[string]string{"vport1p0": "ember.stdin\n", "vport1p1": "ember.stdout\n", "vport1p2": "other\n"} {
		os.MkdirAll(filepath.Join(root, dev), 0o755)
		os.WriteFile(filepath.Join(root, dev, "name"), []byte(name), 0o644)
	}
	got, err := findPorts(root, root, "ember.stdin", "ember.stdout")
	if err != nil || got["ember.stdin"] != "/dev/vport1p0" || got["ember.stdout"] != "/dev/vport1p1" {
		t.Fatalf("findPorts = %v, %v", got, err)
	}
	if _, err := findPorts(root, root, "ember.stderr"); err == nil {
		t.Fatal("a missing port was found")
	}
	start := time.Now()
	if _, err := findPorts(root, filepath.Join(root, "no-driver"), "ember.stdin"); err == nil || time.Since(start) > time.Second {
		t.Fatalf("without the driver: %v after %s, want an error at once", err, time.Since(start))
	}
}
