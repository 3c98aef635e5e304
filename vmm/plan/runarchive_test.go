package plan

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"slices"
	"testing"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/u-root/mkuimage/cpio"
)

func TestRunArchive(t *testing.T) {
	want := proto.Run{Args: []string{"sh", "-c", "echo hi"}, Env: []string{"A=b"}, Dir: "/tmp",
		Nested: &proto.Nested{RootTag: "root", IOTag: "io"}}
	b, err := RunArchive(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%4 != 0 {
		t.Errorf("archive is %d bytes; newc pads to 4", len(b))
	}
	rr, _ := cpio.Format("newc")
	recs, err := cpio.ReadAllRecords(rr.Reader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	var got proto.Run
	var names []string
	for _, r := range recs {
		names = append(names, r.Name)
		if "/"+r.Name == proto.RunFile {
			if err := json.Unmarshal(recordBytes(t, r), &got); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip: %+v, want %+v (records %q)", got, want, names)
	}
	// Parent directories come first so the kernel can create the file.
	if !slices.Equal(names, []string{"etc", "etc/ember", "etc/ember/run.json"}) {
		t.Errorf("records %q", names)
	}
}

func recordBytes(t *testing.T, r cpio.Record) []byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
