package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/ember-vmm/ember/guest/proto"
	"github.com/u-root/mkuimage/cpio"
)

// RunArchive is a small newc cpio holding proto.RunFile (r as JSON). The
// VMM appends it to the cached initramfs in memory; the kernel unpacks
// concatenated archives in order, so each run needs no new image.
func RunArchive(r proto.Run) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("run file: %w", err)
	}
	var buf bytes.Buffer
	if err := writeRun(&buf, cpio.StaticFile(strings.TrimPrefix(proto.RunFile, "/"), string(b), 0o644)); err != nil {
		return nil, fmt.Errorf("run archive: %w", err)
	}
	return buf.Bytes(), nil
}

func writeRun(buf *bytes.Buffer, r cpio.Record) error {
	w := cpio.Newc.Writer(buf)
	if err := cpio.WriteRecordsAndDirs(w, []cpio.Record{r}); err != nil {
		return err
	}
	return cpio.WriteTrailer(w)
}
