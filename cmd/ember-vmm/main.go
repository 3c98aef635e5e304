// Command ember-vmm is the process that holds a VM: ember resolves the
// machine (config, kernel, images) and then executes ember-vmm in its own
// place with the resolved plan, so the VMM links and keeps resident only
// what running a VM needs. It is not meant to be run by hand.
package main

import (
	"os"

	"github.com/ember-vmm/ember/vmm/plan"
)

func main() { os.Exit(plan.Main(os.Args[1:], os.Stderr)) }
