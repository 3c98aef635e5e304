package vmm

import (
	"context"
	"errors"
	"fmt"

	"github.com/ember-vmm/ember/devices/virtio"
	"github.com/ember-vmm/ember/devices/virtio/blk"
	"github.com/ember-vmm/ember/devices/virtio/console"
	vfs "github.com/ember-vmm/ember/devices/virtio/fs"
	vnet "github.com/ember-vmm/ember/devices/virtio/net"
	"github.com/ember-vmm/ember/devices/virtio/ninep"
	"github.com/ember-vmm/ember/devices/virtio/rng"
	"github.com/ember-vmm/ember/devices/virtio/vsock"
	"github.com/ember-vmm/ember/vmm/bus"
	"github.com/ember-vmm/ember/vmm/eventfd"
	"github.com/ember-vmm/ember/vmm/kvm"
	"github.com/ember-vmm/ember/vmm/platform"
	"github.com/ember-vmm/ember/vmm/tap"
)

// virtioDev is one virtio-mmio device of the machine: its model, its
// transport and the eventfds KVM signals on its queue doorbells.
type virtioDev struct {
	name   string
	dev    virtio.Device
	mmio   *virtio.MMIO
	efds   []*eventfd.EventFD
	events []kvm.IOEvent
	closer func() error // the device's host resources (an image file)
}

// virtioNames are the platform names of cfg's virtio devices, in the
// order the guest enumerates them (drives first: vda, vdb, ...).
func virtioNames(cfg Config) []string {
	var names []string
	for i := range cfg.Drives {
		names = append(names, fmt.Sprintf("blk%d", i))
	}
	for i := range cfg.Nets {
		names = append(names, fmt.Sprintf("net%d", i))
	}
	if cfg.RNG {
		names = append(names, "rng")
	}
	if cfg.Vsock != nil {
		names = append(names, "vsock")
	}
	if cfg.Stdio != nil {
		names = append(names, "console")
	}
	for i := range cfg.Shares {
		names = append(names, fmt.Sprintf("fs%d", i))
	}
	for i := range cfg.Shares9P {
		names = append(names, fmt.Sprintf("9p%d", i))
	}
	return names
}

// openVirtio creates the device models, opening (and locking) drive
// images; nothing of KVM is needed yet.
func (m *Machine) openVirtio() error {
	// Devices are made in virtioNames' order, so each takes the name its
	// platform entry was given.
	names := virtioNames(m.cfg)
	add := func(dev virtio.Device, closer func() error) {
		m.virtio = append(m.virtio, &virtioDev{name: names[len(m.virtio)], dev: dev, closer: closer})
	}
	next := func() string { return names[len(m.virtio)] }
	for i, o := range m.cfg.Drives {
		d, err := blk.Open(o, m.devLog(next()))
		if err != nil {
			return fmt.Errorf("drive %d: %w", i, err)
		}
		add(d, d.Close)
	}
	for i, n := range m.cfg.Nets {
		if n.FD <= 2 {
			return fmt.Errorf("net %d: no open tap descriptor (taps are opened before the VMM runs)", i)
		}
		t, err := tap.New(n.FD)
		if err != nil {
			return fmt.Errorf("net %d: %w", i, err)
		}
		m.log.Debug("tap attached", "dev", next(), "tap", t.Name())
		add(vnet.New(t, n.MAC, m.devLog(next())), t.Close)
	}
	if m.cfg.RNG {
		add(rng.New(nil), nil)
	}
	if o := m.cfg.Vsock; o != nil {
		d, err := vsock.Open(*o, m.devLog(next()))
		if err != nil {
			return fmt.Errorf("vsock: %w", err)
		}
		add(d, d.Close)
	}
	if o := m.cfg.Stdio; o != nil {
		d := console.New(*o, m.devLog(next()))
		add(d, d.Close)
	}
	for i, o := range m.cfg.Shares {
		d, err := vfs.Open(o, m.devLog(next()))
		if err != nil {
			return fmt.Errorf("share %d (%s): %w", i, o.Dir, err)
		}
		add(d, d.Close)
	}
	for i, o := range m.cfg.Shares9P {
		d, err := ninep.Open(o, m.devLog(next()))
		if err != nil {
			return fmt.Errorf("9p share %d (%s): %w", i, o.Dir, err)
		}
		add(d, d.Close)
	}
	return nil
}

// attachVirtio wires each device to the platform entry of its name: an
// interrupt through irqfd, and one ioeventfd per queue matching the queue
// index written to QueueNotify, so neither costs an exit to userspace.
func (m *Machine) attachVirtio(impl map[string]bus.Device) error {
	for _, v := range m.virtio {
		p, ok := m.plat.Lookup(v.name)
		if !ok {
			return fmt.Errorf("virtio device %s not in the platform table", v.name)
		}
		line, err := m.edgeLine(p.GSI)
		if err != nil {
			return err
		}
		var ns []virtio.Notifier
		for q := range v.dev.QueueMaxSizes() {
			efd, err := eventfd.New()
			if err != nil {
				return err
			}
			v.efds = append(v.efds, efd)
			ev := kvm.IOEvent{Addr: p.Base + virtio.RegQueueNotify, Len: 4, Match: true, Data: uint64(q)}
			if err := m.vm.AddIOEvent(efd.FD(), ev); err != nil {
				return fmt.Errorf("virtio %s queue %d: %w", v.name, q, err)
			}
			v.events = append(v.events, ev)
			ns = append(ns, efd)
		}
		if v.mmio, err = virtio.NewMMIO(v.dev, m.mem, line, ns, m.devLog(v.name)); err != nil {
			return err
		}
		impl[v.name] = v.mmio
	}
	return nil
}

// startVirtio lets device workers run in g until the machine ends.
func (m *Machine) startVirtio(g *group) {
	if len(m.virtio) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.atEnd(cancel)
	for _, v := range m.virtio {
		name := "virtio " + v.name
		v.mmio.Start(ctx, func(f func() error) { g.Go(name, f) })
	}
}

// closeVirtio detaches the doorbells and releases host resources.
func (m *Machine) closeVirtio() error {
	var errs []error
	for _, v := range m.virtio {
		for i, efd := range v.efds {
			if i < len(v.events) && m.vm != nil {
				errs = append(errs, m.vm.RemoveIOEvent(efd.FD(), v.events[i]))
			}
			errs = append(errs, closed(efd.Close()))
		}
		if v.closer != nil {
			errs = append(errs, v.closer())
		}
	}
	return errors.Join(errs...)
}

// deviceStats are the counters of every virtio device by name.
func (m *Machine) deviceStats() map[string]map[string]uint64 {
	if len(m.virtio) == 0 {
		return nil
	}
	out := map[string]map[string]uint64{}
	for _, v := range m.virtio {
		s := v.dev.Stats().Snapshot()
		if v.mmio != nil && v.mmio.NeedsReset() {
			s["needs_reset"] = 1
		}
		out[v.name] = s
	}
	return out
}

// addVirtio puts cfg's virtio devices into the platform table.
func addVirtio(plat *platform.Platform, cfg Config) error {
	for _, n := range virtioNames(cfg) {
		if _, err := plat.AddVirtioMMIO(n); err != nil {
			return err
		}
	}
	return nil
}
