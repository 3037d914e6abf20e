"""Test harness: a tiny Debian 12 guest with systemd, booted under QEMU TCG.

The guest proves that systemd credentials delivered by the host (SMBIOS type 11
OEM strings, QEMU fw_cfg, virtiofs) arrive inside a real systemd system.

* :func:`tests.guest.image.ensure_guest` builds (once, cached) a kernel plus a
  compressed cpio initramfs holding a Debian bookworm root file system.
* :func:`tests.guest.qemu.boot` boots it and parses the in-guest probe output.
"""
