package nested

import (
	"io"
	"net"
	"os"
	"strconv"

	"github.com/ember-vmm/ember/devices/virtio/rng"
)

// TapNIC is a host tap that L1 gets as a NIC: QEMU takes the open file,
// so the tap keeps the owner and lifetime it has on the host.
type TapNIC struct {
	File *os.File
	MAC  net.HardwareAddr
}

// L1Network is the network the inner ember sets up in L1 before its VM
// starts (netsetup.SetupL1): the relay NIC's address, and per host tap a
// bridge joining L1's NIC on that tap with the inner VM's tap.
type L1Network struct {
	RelayMAC string     `json:"relay_mac,omitempty"`
	Bridges  []L1Bridge `json:"bridges,omitempty"`
}

// L1Bridge is a bridge in L1 over the NIC with that MAC.
type L1Bridge struct {
	NIC  string `json:"nic"`
	Name string `json:"name"`
}

// RandomMAC is a random locally administered unicast address.
func RandomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	_, _ = io.ReadFull(rng.Source, m)
	m[0] = m[0]&^1 | 2
	return m
}

// BridgeName is the bridge in L1 of host tap i.
func BridgeName(i int) string { return "emberbr" + strconv.Itoa(i) }
