package main

import (
	"encoding/json"
	"fmt"

	"github.com/ember-vmm/ember/images"
	"github.com/ember-vmm/ember/vmm/launch"
	"github.com/spf13/cobra"
)

func newImagesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "images",
		Short: "Fetch kernels and build initramfs images into the cache",
	}
	var flavours []string
	var asJSON, l1 bool
	fetch := &cobra.Command{
		Use:   "fetch",
		Short: "Fetch Debian kernels and build ember's initramfs for each (cached)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := g.cacheDir
			if dir == "" {
				dir = images.DefaultDir()
			}
			c := &images.Cache{Dir: dir, Log: g.log, Progress: progress(false), Verify: true}
			ib, err := launch.InitBinary("")
			if err != nil {
				return err
			}
			type entry struct {
				Flavour   string `json:"flavour"`
				Version   string `json:"version"`
				Kernel    string `json:"kernel"`
				Vmlinux   string `json:"vmlinux"`
				Initramfs string `json:"initramfs"`
				L1        string `json:"l1_initramfs,omitempty"`
			}
			var out []entry
			for _, fl := range flavours {
				k, err := c.Kernel(cmd.Context(), fl)
				if err != nil {
					return err
				}
				e := entry{Flavour: fl, Version: k.Version, Kernel: k.Path}
				if e.Vmlinux, err = c.Vmlinux(cmd.Context(), k); err != nil {
					return err
				}
				if e.Initramfs, err = c.Initramfs(cmd.Context(), k, ib); err != nil {
					return err
				}
				if l1 && fl == "amd64" {
					if e.L1, err = c.L1Initramfs(cmd.Context(), k, ib); err != nil {
						return err
					}
				}
				out = append(out, e)
			}
			if asJSON {
				b, _ := json.MarshalIndent(out, "", "  ")
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			}
			for _, e := range out {
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n  kernel    %s\n  vmlinux   %s\n  initramfs %s\n", e.Flavour, e.Version, e.Kernel, e.Vmlinux, e.Initramfs)
				if e.L1 != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "  nested L1 %s\n", e.L1)
				}
			}
			return nil
		},
	}
	fetch.Flags().StringSliceVar(&flavours, "flavour", []string{"cloud-amd64", "amd64"}, "Debian kernel flavours")
	fetch.Flags().BoolVar(&asJSON, "json", false, "print paths as JSON")
	fetch.Flags().BoolVar(&l1, "nested", true, "also build the L1 image used by --accel nested")
	var minimal bool
	kernel := &cobra.Command{
		Use:   "kernel --minimal",
		Short: "Build ember's minimal kernel from Debian's kernel source (cached; --kernel minimal)",
		Long: `Build a small x86-64 kernel from Debian's linux-source-6.1: tinyconfig with
images/minimal.config merged over it (virtio-mmio with blk, net, vsock, rng,
console, virtiofs and 9p, the 8250 serial port, ACPI, PVH, ext4, tmpfs and
devtmpfs, all built in; no modules, PCI, USB, graphics or sound). It takes
minutes, once per cache; then --kernel minimal boots it (ember run, ember
test, ember bench). Missing packages (the source, a compiler, flex, bison,
libelf-dev) are installed with apt-get when run as root.`,
		Example: "  ember images kernel --minimal\n  ember run --kernel minimal -- ember-info",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !minimal {
				return fmt.Errorf("ember images kernel: only --minimal is built here (Debian kernels come with ember images fetch)")
			}
			dir := g.cacheDir
			if dir == "" {
				dir = images.DefaultDir()
			}
			c := &images.Cache{Dir: dir, Log: g.log, Progress: progress(false)}
			p, err := c.BuildMinimal(cmd.Context())
			if err != nil {
				return err
			}
			ib, err := launch.InitBinary("")
			if err != nil {
				return err
			}
			initrd, err := c.Initramfs(cmd.Context(), nil, ib)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "minimal\n  kernel    %s\n  initramfs %s\n", p, initrd)
			return nil
		},
	}
	kernel.Flags().BoolVar(&minimal, "minimal", false, "build the minimal kernel")
	cmd.AddCommand(fetch, kernel)
	return cmd
}
