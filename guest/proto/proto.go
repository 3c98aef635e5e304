// Package proto is the contract between ember on the host and the init it
// puts into the guest: where the guest finds what to run, and the I/O ports
// through which it reports back.
package proto

// I/O ports of ember's control device. The guest writes single bytes with
// the x86 OUT instruction after ioperm(2) (Debian's kernels have no
// /dev/port).
const (
	// PortBase is the first port of the control device.
	PortBase = 0x0ff0
	// PortCount is how many ports the control device claims.
	PortCount = 4
	// PortExit: a byte written here is the guest command's exit status; the
	// VM stops and ember exits with that status.
	PortExit = PortBase + 0
	// PortMark: a byte written here records a boot milestone (Mark*) with the
	// host's monotonic time.
	PortMark = PortBase + 1
	// PortPanic: any write reports that the guest is about to fail in a way
	// it cannot report through PortExit (init itself failed).
	PortPanic = PortBase + 2
)

// Boot milestones written to PortMark.
const (
	MarkInit    = 1 // guest init (PID 1) started: userspace is up
	MarkCommand = 2 // the user's command is about to start
	// MarkStdioOnConsole: Run.Stdio was asked, but the kernel has no
	// virtio-console ports: the command's output is on the serial
	// console, which the host then passes on as the command's stdout.
	MarkStdioOnConsole = 3
)

// StatusInitFailed is reported through PortExit when init cannot run the
// command at all (missing binary, bad run file).
const StatusInitFailed = 127

// RunFile is where the guest init reads its instructions. ember appends a
// small newc cpio archive holding it to the initramfs (the kernel unpacks
// concatenated archives in order), so the base image stays cacheable.
const RunFile = "/etc/ember/run.json"

// ModulesFile lists kernel modules (paths inside the initramfs), one a line,
// in the order init loads them. Written by the image builder.
const ModulesFile = "/etc/ember/modules"

// Names of the virtio-console ports of Run.Stdio, as the guest finds them
// in /sys/class/virtio-ports/*/name.
const (
	StdinPort  = "ember.stdin"
	StdoutPort = "ember.stdout"
	StderrPort = "ember.stderr"
)

// Framed output of the nested L1 guest's ports. QEMU may still hold
// output when L1 powers off, so there the output ports carry frames: a
// 4-byte little-endian length, then that many bytes; a zero length ends
// the stream, and the host answers it with one byte (FrameAck) on the
// same port once everything before it is delivered.
const (
	FrameHeader = 4
	FrameMax    = 64 << 10
	FrameAck    = 'A'
)

// Run is the content of RunFile.
type Run struct {
	// Args is the command and its arguments; empty means an interactive
	// shell on the console.
	Args []string `json:"args,omitempty"`
	// Env is added to init's environment (KEY=VALUE).
	Env []string `json:"env,omitempty"`
	// Dir is the working directory for the command.
	Dir string `json:"dir,omitempty"`
	// Shell is the program to start when Args is empty.
	Shell string `json:"shell,omitempty"`
	// Winsize is the host terminal's size, for the interactive shell.
	Winsize *Winsize `json:"winsize,omitempty"`
	// Stdio: the command's stdin, stdout and stderr are the virtio-console
	// ports named StdinPort, StdoutPort and StderrPort, not the serial
	// console (which then carries only kernel and init messages).
	Stdio bool `json:"stdio,omitempty"`

	// Shares are virtio-fs file systems init mounts before the command.
	Shares []Share `json:"shares,omitempty"`
	// RootTag, when set, names the virtio-fs share of the host's / that
	// becomes the command's root (read-only, with the guest's own /proc,
	// /sys, /dev and tmpfs on /tmp, /run and /var/tmp); Shares are then
	// mounted inside it.
	RootTag string `json:"root_tag,omitempty"`
	// Tmpfs are directories of the host root covered by an empty tmpfs
	// (with the directory's owner and mode), mounted with the shares,
	// outer directories first.
	Tmpfs []string `json:"tmpfs,omitempty"`

	// Nested, when set, makes init act as the L1 host of --accel nested:
	// it loads KVM, mounts the shares and runs ember itself.
	Nested *Nested `json:"nested,omitempty"`
}

// Share is one virtio-fs mount: the device's tag and where it goes.
type Share struct {
	Tag      string `json:"tag"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// NineP: the share is virtio-9p (9P2000.L), not virtiofs.
	NineP bool `json:"9p,omitempty"`
}

// Nested describes what the L1 init of --accel nested does.
type Nested struct {
	// RootTag is the 9p mount tag of the host's root directory (read-only).
	RootTag string `json:"root_tag"`
	// IOTag is the 9p mount tag of a read-write host directory where init
	// writes StatusFile and ember writes its result.
	IOTag string `json:"io_tag"`
	// Mounts are extra host directories, mounted at the same path in L1.
	Mounts []NestedMount `json:"mounts,omitempty"`
	// Heartbeat is a device file in L1 to which init writes a byte every
	// second, at offset HeartbeatOffset, so the host, which watches what
	// arrives, can tell a stuck L1 from a slow one.
	Heartbeat       string `json:"heartbeat,omitempty"`
	HeartbeatOffset int64  `json:"heartbeat_offset,omitempty"`
}

// NestedMount is one extra 9p share.
type NestedMount struct {
	Tag      string `json:"tag"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only"`
}

// Files inside the Nested.IOTag share.
const (
	// StatusFile holds the exit status of ember inside L1, in decimal.
	StatusFile = "status"
	// ResultFile holds the JSON result of ember inside L1.
	ResultFile = "result.json"
	// StartedFile is created (empty) by the L1 init just before it starts
	// the command; the host takes its appearance as the end of L1's boot.
	StartedFile = "started"
	// IOMount is where L1 mounts the IOTag share, inside the chroot into the
	// host's root. L1 mounts a tmpfs over the (read-only, shared) host /run
	// first, so the host needs no such directory.
	IOMount = "/run/ember-io"
	// GuestXSAVEEnv set to "off" in ember's environment hides XSAVE from
	// its guests. The nested L1's init sets it: the emulator under L1 does
	// not tell L1's KVM when a guest sets XCR0 (vmm.Config.NoXSAVE).
	GuestXSAVEEnv = "EMBER_GUEST_XSAVE"
)
