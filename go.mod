module github.com/ember-vmm/ember

go 1.26

require (
	github.com/bobuhiro11/gokvm v0.0.8-0.20231003020000-f53faca69d28
	github.com/hanwen/go-fuse/v2 v2.12.1
	github.com/hugelgupf/p9 v0.3.0
	github.com/klauspost/compress v1.17.4
	github.com/pelletier/go-toml/v2 v2.2.4
	github.com/pierrec/lz4/v4 v4.1.18
	github.com/spf13/cobra v1.10.2
	github.com/u-root/gobusybox/src v0.0.0-20240226024758-7e6217d0eb49
	github.com/u-root/mkuimage v0.0.0-20250701161901-6a9871f2e64f
	github.com/u-root/u-root v0.14.0
	github.com/u-root/uio v0.0.0-20240209044354-b3d14b93376a
	github.com/ulikunitz/xz v0.5.11
	github.com/vishvananda/netlink v1.3.1
	golang.org/x/sys v0.38.0
	golang.org/x/term v0.37.0
	mvdan.cc/sh/v3 v3.7.0
)

require (
	github.com/dustin/go-humanize v1.0.1 // indirect
	github.com/hugelgupf/go-shlex v0.0.0-20200702092117-c80c9d0918fa // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/exp v0.0.0-20240222234643-814bf88cf225 // indirect
	golang.org/x/mod v0.30.0 // indirect
	golang.org/x/sync v0.18.0 // indirect
	golang.org/x/tools v0.39.0 // indirect
)
