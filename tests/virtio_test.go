package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// diskImage creates a raw image of size bytes; with ext4 set it is
// formatted on the host (the guest has no mkfs).
func diskImage(t *testing.T, size int64, ext4 bool) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if ext4 {
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", p).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4 (install e2fsprogs): %v\n%s", err, out)
		}
	}
	return p
}

// TestVMDrives: on both kernels with two CPUs, an ext4 drive is mounted,
// written and read back in the guest and the file is in the host image;
// a read-only drive refuses writes and stays byte for byte the same.
func TestVMDrives(t *testing.T) {
	besideVM(t)
	for _, flavour := range deviceKernels() {
		t.Run(flavour, func(t *testing.T) {
			disk := diskImage(t, 64<<20, true)
			ro := filepath.Join(t.TempDir(), "ro.img")
			pattern := bytes.Repeat([]byte("read-only!"), 100<<10/10)
			if err := os.WriteFile(ro, pattern, 0o644); err != nil {
				t.Fatal(err)
			}
			script := `mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo hello-from-the-guest > /mnt/greeting && sync && umount /mnt &&
mount -t ext4 /dev/vda /mnt && cat /mnt/greeting && umount /mnt &&
cat /sys/block/vdb/ro | tr 1 R && head_ok=$(dd if=/dev/vdb bs=10 count=1 2>/dev/null) && echo "ro-reads: $head_ok";
if dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>/dev/null; then echo RO-WRITE-SUCCEEDED; else echo ro-write-refused; fi; sync`
			r := ember(t, bootLimit, vmArgs("--kernel", kernelArg(flavour), "--cpus", "2", "--json",
				"--drive", "path="+disk, "--drive", "path="+ro+",ro,id=golden", "--", "sh", "-c", script)...)
			wantCode(t, r, 0)
			wantOut(t, r, "hello-from-the-guest")
			wantOut(t, r, "ro-reads: read-only!")
			wantOut(t, r, "R")
			wantOut(t, r, "ro-write-refused")
			out, err := exec.Command("debugfs", "-R", "cat /greeting", disk).Output()
			if err != nil || !strings.Contains(string(out), "hello-from-the-guest") {
				t.Fatalf("host image lacks the guest's file: %v %q", err, out)
			}
			if got, _ := os.ReadFile(ro); !bytes.Equal(got, pattern) {
				t.Fatal("the read-only image changed")
			}
			dev := report(t, r)["devices"].(map[string]any)
			blk0 := dev["blk0"].(map[string]any)
			if blk0["requests"].(float64) == 0 || blk0["bytes_read"].(float64) == 0 {
				t.Fatalf("blk0 counters: %v", blk0)
			}
		})
	}
}

// TestVMEntropy: on both kernels with two CPUs, the guest's hwrng is
// virtio-rng and gives bytes.
func TestVMEntropy(t *testing.T) {
	besideVM(t)
	for _, flavour := range deviceKernels() {
		t.Run(flavour, func(t *testing.T) {
			entropy(t, bootLimit, vmArgs("--kernel", kernelArg(flavour), "--cpus", "2")...)
		})
	}
}

// entropy runs ember with args and a guest that reads its hwrng.
func entropy(t *testing.T, limit time.Duration, args ...string) {
	t.Helper()
	r := ember(t, limit, append(args, "--rng", "--json", "--", "sh", "-c",
		"cat /sys/class/misc/hw_random/rng_current && dd if=/dev/hwrng of=/tmp/r bs=64 count=4 2>/dev/null && wc -c < /tmp/r")...)
	wantCode(t, r, 0)
	wantOut(t, r, "virtio_rng")
	wantOut(t, r, "256")
	rng := report(t, r)["devices"].(map[string]any)["rng"].(map[string]any)
	if rng["bytes_written"].(float64) < 256 {
		t.Fatalf("rng counters: %v", rng)
	}
}

// TestVMDriveDataSafety: what the guest wrote and synced is in the image
// after ember is killed with SIGKILL; while it runs, a second ember is
// refused the same image.
func TestVMDriveDataSafety(t *testing.T) {
	besideVM(t)
	disk := diskImage(t, 32<<20, true)
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.ember, vmArgs("--drive", "path="+disk, "--", "sh", "-c",
		"mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && echo durable-bytes-0123456789 > /mnt/file && sync && echo SYNCED && sleep 600")...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	synced := make(chan bool, 1)
	var seen bytes.Buffer
	go func() {
		s := bufio.NewScanner(io.TeeReader(stdout, &seen))
		for s.Scan() {
			if strings.Contains(s.Text(), "SYNCED") {
				synced <- true
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
		synced <- false
	}()
	select {
	case ok := <-synced:
		if !ok {
			t.Fatalf("guest ended before syncing\nstdout:\n%s\nstderr:\n%s", seen.String(), stderr.String())
		}
	case <-ctx.Done():
		t.Fatalf("no SYNCED within %s\nstdout:\n%s", bootLimit, seen.String())
	}
	second := ember(t, bootLimit, vmArgs("--drive", "path="+disk, "--", "true")...)
	if second.code != 125 || !strings.Contains(second.stderr, "in use by another VM") {
		t.Fatalf("second ember on a busy image: exit %d, stderr %q; want 125 and a clear message", second.code, second.stderr)
	}
	if err := cmd.Process.Signal(os.Kill); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	// The file system was not unmounted: replay its journal as the next
	// mount would, then read the file.
	if out, err := exec.Command("e2fsck", "-fy", disk).CombinedOutput(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 1 {
			t.Fatalf("e2fsck: %v\n%s", err, out)
		}
	}
	out, err := exec.Command("debugfs", "-R", "cat /file", disk).Output()
	if err != nil || !strings.Contains(string(out), "durable-bytes-0123456789") {
		t.Fatalf("after SIGKILL the image lacks the synced file: %v %q", err, out)
	}
}

// TestVMVsock: on both kernels with two CPUs, 1 MiB from a host program
// to a guest listener through the device socket ("CONNECT 1234"), then
// back from the guest to a host listener on <socket>_5000; both copies
// arrive whole.
func TestVMVsock(t *testing.T) {
	besideVM(t)
	for _, flavour := range deviceKernels() {
		t.Run(flavour, func(t *testing.T) {
			vsockRoundTrip(t, bootLimit, 1<<20, vmArgs("--kernel", kernelArg(flavour), "--cpus", "2")...)
		})
	}
}

// vsockRoundTrip runs ember with args and a guest that takes size bytes
// from the host over vsock and sends them back.
func vsockRoundTrip(t *testing.T, limit time.Duration, size int, args ...string) {
	t.Helper()
	uds := filepath.Join(t.TempDir(), "v.sock")
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i*7 + i>>11)
	}
	args = append(args, "--vsock", "cid=3,uds="+uds, "--json", "--", "sh", "-c",
		"ember-vsock listen 1234 > /tmp/got && wc -c < /tmp/got && ember-vsock connect 2 5000 < /tmp/got")
	var sendErr error
	var got []byte
	// Each attempt has its own host ends: a hung guest may have taken
	// part of the stream.
	r := retried(t, limit, args, func() (result, bool) {
		_ = os.Remove(uds + "_5000")
		back, err := net.Listen("unix", uds+"_5000")
		if err != nil {
			t.Fatal(err)
		}
		defer back.Close()
		returned := make(chan []byte, 1)
		go func() {
			c, err := back.Accept()
			if err != nil {
				returned <- nil
				return
			}
			defer c.Close()
			// Ember closes its end when it exits.
			_ = c.SetDeadline(time.Now().Add(limit))
			b, _ := io.ReadAll(c)
			returned <- b
		}()
		ctx, cancel := context.WithCancel(context.Background())
		sent := make(chan error, 1)
		go func() { sent <- sendToGuest(ctx, uds, 1234, payload, limit) }()
		r, hung := emberOnce(t, limit, nil, args...)
		cancel()
		back.Close()
		sendErr, got = <-sent, <-returned
		return r, hung
	})
	wantCode(t, r, 0)
	if sendErr != nil {
		t.Fatalf("host to guest: %v\nstdout:\n%s\nstderr:\n%s", sendErr, r.stdout, r.stderr)
	}
	wantOut(t, r, fmt.Sprint(size))
	if !bytes.Equal(got, payload) {
		t.Fatalf("guest to host: %d bytes back, equal %v", len(got), bytes.Equal(got, payload))
	}
	if _, err := os.Stat(uds); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind: %v", uds, err)
	}
}

// sendToGuest connects through the device socket to a guest port,
// retrying while the guest's listener is not up yet, and sends b. It
// gives up when ctx ends (ember exited).
func sendToGuest(ctx context.Context, uds string, port int, b []byte, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		c, err := net.Dial("unix", uds)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		stop := context.AfterFunc(ctx, func() { c.Close() })
		fmt.Fprintf(c, "CONNECT %d\n", port)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "OK ") {
			stop()
			c.Close()
			time.Sleep(200 * time.Millisecond)
			continue
		}
		_ = c.SetDeadline(time.Now().Add(limit))
		if _, err := c.Write(b); err != nil {
			stop()
			c.Close()
			return err
		}
		err = c.(*net.UnixConn).CloseWrite()
		// Wait for the guest to close its side: everything was taken.
		_, _ = io.Copy(io.Discard, c)
		stop()
		c.Close()
		return err
	}
	return fmt.Errorf("no guest listener on port %d (ember ended or %s passed)", port, limit)
}

// TestVMNet: on both kernels with two CPUs, a guest on a host bridge
// (through a tap ember creates) pings the host and sends it data over
// TCP; the host's checksum of what arrived matches the guest's: 100 MiB.
func TestVMNet(t *testing.T) {
	needVM(t)
	for _, flavour := range deviceKernels() {
		t.Run(flavour, func(t *testing.T) {
			netRoundTrip(t, bootLimit, 100, vmArgs("--kernel", kernelArg(flavour), "--cpus", "2")...)
		})
	}
}

// netRoundTrip runs ember with args and a guest on a fresh host bridge
// that pings the host and sends it mib MiB over TCP. u-root's ping fails
// on the first reply later than -w (100 ms by default); the first one
// waits for ARP through up to two emulated layers.
func netRoundTrip(t *testing.T, limit time.Duration, mib int, args ...string) {
	t.Helper()
	hostBridge(t, "embr-e2e", "10.0.2.1/24")
	size := int64(mib) << 20
	args = append(args, "--json", "--net", "bridge=embr-e2e,mac=06:00:0a:00:02:02", "--", "sh", "-c",
		"ip addr add 10.0.2.2/24 dev eth0 && ip link set eth0 up && ping -c 2 -i 200 -w 10000 10.0.2.1 && "+
			fmt.Sprintf("dd if=/dev/urandom of=/tmp/blob bs=1M count=%d 2>/dev/null && md5sum /tmp/blob && netcat 10.0.2.1:9000 < /tmp/blob", mib))
	var hostSum string
	// Each attempt has its own listener: a hung guest may have sent part
	// of the stream.
	r := retried(t, limit, args, func() (result, bool) {
		ln, err := net.Listen("tcp", "10.0.2.1:9000")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		sum := make(chan string, 1)
		ended, end := context.WithCancel(context.Background())
		go func() {
			c, err := ln.Accept()
			if err != nil {
				sum <- err.Error()
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(limit))
			// A guest that dies sends no FIN: what it sent before its end
			// is in the socket by then, so a short wait is enough.
			stop := context.AfterFunc(ended, func() { _ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) })
			defer stop()
			h := md5.New()
			n, err := io.CopyN(h, c, size)
			if err != nil {
				sum <- fmt.Sprintf("after %d bytes: %v", n, err)
				return
			}
			sum <- hex.EncodeToString(h.Sum(nil))
		}()
		r, hung := emberOnce(t, limit, nil, args...)
		end()
		ln.Close()
		hostSum = <-sum
		return r, hung
	})
	wantCode(t, r, 0)
	guestSum := regexp.MustCompile(`\b[0-9a-f]{32}\b`).FindString(r.stdout)
	if guestSum == "" {
		t.Fatalf("no md5 from the guest:\n%s", r.stdout)
	}
	if hostSum != guestSum {
		t.Fatalf("host received md5 %s, guest sent %s", hostSum, guestSum)
	}
	dev := report(t, r)["devices"].(map[string]any)["net0"].(map[string]any)
	if dev["bytes_read"].(float64) < float64(size) {
		t.Fatalf("net0 counters: %v", dev)
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if m := l.Attrs().MasterIndex; m != 0 && l.Type() == "tuntap" {
				if br, err := netlink.LinkByIndex(m); err == nil && br.Attrs().Name == "embr-e2e" {
					t.Errorf("ember's tap %s is still on the bridge after ember exited", l.Attrs().Name)
				}
			}
		}
	}
}

// TestVMDriveIO: direct I/O from the guest, sequential and random, reads
// and writes, completes (the same program the device benchmark times).
func TestVMDriveIO(t *testing.T) {
	besideVM(t)
	disk := diskImage(t, 64<<20, false)
	initrd := initrdWith(t, map[string]string{"ioperf": env.ioperf}, nil)
	r := ember(t, bootLimit, vmArgs("--initrd", initrd, "--timeout", "90s", "--json", "--drive", "path="+disk, "--", "ioperf", "/dev/vda", "8", "256")...)
	wantCode(t, r, 0)
	for _, p := range []string{"seqwrite", "seqread", "randwrite", "randread"} {
		wantOut(t, r, "ioperf "+p)
	}
}

// deviceKernels are the kernels every device test boots: Debian's two
// and ember's minimal one (all built in).
func deviceKernels() []string { return []string{"cloud-amd64", "amd64", "minimal"} }

// kernelArg is --kernel's value for a kernel of deviceKernels.
func kernelArg(flavour string) string {
	if flavour == "minimal" {
		return "minimal"
	}
	return "debian:" + flavour
}

// hostBridge creates a bridge with the host's address on it, removed when
// the test ends (the VM tests run as root inside L1).
func hostBridge(t testing.TB, name, cidr string) *netlink.Bridge {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	_ = netlink.LinkDel(br)
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("bridge %s: %v", name, err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(br) })
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(br, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	return br
}
