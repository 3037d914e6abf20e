"""In-guest probe: shell scripts and systemd units installed into the guest image.

The probe is driven by kernel command line parameters:

* ``credbridge.probe=NAME1,NAME2,...`` - credential names to read back;
* ``credbridge.virtiofs=TAG`` - (optional) virtiofs tag to mount read-only at
  ``/run/credbridge``; files there are loaded with
  ``LoadCredential=NAME:/run/credbridge/NAME``;
* ``credbridge.files=PATH1,PATH2,...`` - (optional) report these paths after boot:
  ``CBPROBE dir PATH MODE OWNER:GROUP`` or ``CBPROBE file PATH MODE OWNER:GROUP BASE64``
  (``CBPROBE nofile PATH`` when absent), e.g. what systemd-tmpfiles provisioned;
* ``credbridge.units=1`` - (optional) use the guest files shipped in
  ``examples/guest/`` instead: ``systemctl start run-credbridge.mount`` (tag
  ``credbridge``) and give the values service a drop-in made from the shipped
  ``credbridge-credentials.conf`` (its ``LoadCredential=`` lines replaced by
  ``LoadCredential=NAME:/run/credbridge/NAME`` for the probed names).

It writes lines starting with ``CBPROBE`` to ``/dev/ttyS0`` (the serial console
the harness captures) and powers the guest off afterwards.  Every line is
written by one ``printf`` so lines are not torn apart by other writers.
"""

from __future__ import annotations

PROBE_PREFIX = "CBPROBE"

#: Where the assets are installed inside the guest.
PROBE_SCRIPT_PATH = "/usr/local/lib/credbridge-probe/probe"
VALUES_SCRIPT_PATH = "/usr/local/lib/credbridge-probe/values"
PROBE_UNIT_NAME = "credbridge-probe.service"
VALUES_UNIT_NAME = "credbridge-probe-values.service"
#: The shipped drop-in (examples/guest/credbridge-credentials.conf), copied into the image.
CREDENTIALS_DROPIN_PATH = "/usr/local/lib/credbridge-probe/credbridge-credentials.conf"
#: The shipped mount unit (examples/guest/run-credbridge.mount), installed but not enabled.
MOUNT_UNIT_NAME = "run-credbridge.mount"

PROBE_SCRIPT = r"""#!/bin/sh
# credbridge test-harness probe (runs as credbridge-probe.service in the guest).
set -u
OUT=/dev/ttyS0
[ -w "$OUT" ] || OUT=/dev/console
exec >"$OUT" 2>&1

say() { printf 'CBPROBE %s\n' "$*"; }

names=""
tag=""
units=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        credbridge.probe=*) names="${arg#credbridge.probe=}" ;;
        credbridge.virtiofs=*) tag="${arg#credbridge.virtiofs=}" ;;
        credbridge.units=1) units=yes ;;
        credbridge.files=*) files="${arg#credbridge.files=}" ;;
    esac
done
names=$(printf '%s' "$names" | tr ',' ' ')

say "start"
say "systemd-version $(systemctl --version | head -n 1 | cut -d ' ' -f 2)"
for p in $(printf '%s' "${files:-}" | tr ',' ' '); do
    if [ -d "$p" ]; then
        say "dir $p $(stat -c '%04a %U:%G' "$p")"
    elif [ -f "$p" ]; then
        say "file $p $(stat -c '%04a %U:%G' "$p") $(base64 -w0 <"$p")"
    else
        say "nofile $p"
    fi
done
systemd-creds --system --no-pager --no-legend list 2>/dev/null | while IFS= read -r line; do
    say "list $line"
done

if [ -n "$tag" ]; then
    mkdir -p /run/credbridge
    modprobe -a virtio_pci virtiofs 2>/dev/null
    mounted=no
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        if mount -t virtiofs "$tag" /run/credbridge -o ro 2>/dev/null; then
            mounted=yes
            break
        fi
        sleep 0.5
    done
    if [ "$mounted" = yes ]; then
        say "virtiofs-mounted $tag"
        for f in /run/credbridge/* /run/credbridge/.[!.]*; do
            [ -e "$f" ] || continue
            say "virtiofs-file ${f#/run/credbridge/} $(stat -c %04a "$f")"
        done
    else
        say "virtiofs-mount-failed $tag"
    fi
elif [ -n "$units" ]; then
    # The shipped guest files: the mount unit mounts the share, nothing else does.
    tag=credbridge
    modprobe -a virtio_pci virtiofs 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        systemctl start __MOUNT_UNIT__ 2>/dev/null && break
        systemctl reset-failed __MOUNT_UNIT__ 2>/dev/null
        sleep 0.5
    done
    say "unit __MOUNT_UNIT__ $(systemctl is-active __MOUNT_UNIT__ 2>/dev/null)"
    fstype=$(findmnt -n -o FSTYPE --mountpoint /run/credbridge 2>/dev/null)
    opts=$(findmnt -n -o OPTIONS --mountpoint /run/credbridge 2>/dev/null)
    [ -n "$fstype" ] && say "mount /run/credbridge $fstype $opts"
    if mountpoint -q /run/credbridge; then
        say "virtiofs-mounted $tag"
        for f in /run/credbridge/* /run/credbridge/.[!.]*; do
            [ -e "$f" ] || continue
            say "virtiofs-file ${f#/run/credbridge/} $(stat -c %04a "$f")"
        done
    else
        say "virtiofs-mount-failed $tag"
    fi
fi

present=""
for n in $names; do
    if [ -n "$tag" ] && [ -f "/run/credbridge/$n" ]; then
        present="$present $n"
    elif [ -e "/run/credentials/@system/$n" ]; then
        present="$present $n"
    fi
done
for n in $names; do
    case " $present " in
        *" $n "*) ;;
        *) say "missing $n" ;;
    esac
done

if [ -n "$present" ]; then
    # A real (non-transient) service receives the credentials, like a production
    # service would.  systemd-run --wait needs D-Bus, which the guest lacks, so the
    # unit is written to /run/systemd/system and started through the private socket.
    unit=/run/systemd/system/__VALUES_UNIT__
    out=/run/credbridge-probe-values.out
    rm -f "$out"
    if [ -n "$units" ]; then
        # The shipped drop-in, its LoadCredential= lines swapped for the probed names
        # (its [Service] section comes last, so appended lines belong to it).
        mkdir -p "$unit.d"
        {
            grep -v '^LoadCredential=' __DROPIN__
            for n in $present; do
                printf 'LoadCredential=%s:/run/credbridge/%s\n' "$n" "$n"
            done
        } >"$unit.d/credbridge-credentials.conf"
    fi
    {
        printf '[Unit]\nDescription=credbridge probe: credential values\n'
        printf '[Service]\nType=oneshot\nStandardInput=null\n'
        printf 'StandardOutput=truncate:%s\nStandardError=journal\n' "$out"
        for n in $present; do
            if [ -n "$units" ]; then
                :
            elif [ -n "$tag" ] && [ -f "/run/credbridge/$n" ]; then
                printf 'LoadCredential=%s:/run/credbridge/%s\n' "$n" "$n"
            else
                printf 'LoadCredential=%s\n' "$n"
            fi
        done
        # shellcheck disable=SC2086
        printf 'ExecStart=__VALUES__%s\n' "$(printf ' %s' $present)"
    } >"$unit"
    if ! systemctl start __VALUES_UNIT__ 2>/dev/null; then
        systemctl daemon-reload
        systemctl start __VALUES_UNIT__ || say "values-unit-failed"
    fi
    [ -f "$out" ] && cat "$out"
    if [ -n "$units" ]; then
        say "requires-mounts-for __VALUES_UNIT__ $(systemctl show -P RequiresMountsFor __VALUES_UNIT__ 2>/dev/null)"
    fi
fi

say "done"
systemctl --no-block poweroff 2>/dev/null || poweroff -f
""".replace("__VALUES__", VALUES_SCRIPT_PATH).replace("__VALUES_UNIT__", VALUES_UNIT_NAME)
PROBE_SCRIPT = PROBE_SCRIPT.replace("__MOUNT_UNIT__", MOUNT_UNIT_NAME).replace(
    "__DROPIN__", CREDENTIALS_DROPIN_PATH
)

VALUES_SCRIPT = r"""#!/bin/sh
# Prints the exact bytes of each credential handed to this service, base64 encoded.
set -u
for n in "$@"; do
    f="${CREDENTIALS_DIRECTORY:-/nonexistent}/$n"
    if [ -f "$f" ]; then
        printf 'CBPROBE value %s %s\n' "$n" "$(base64 -w0 <"$f")"
    else
        printf 'CBPROBE missing %s\n' "$n"
    fi
done
"""

PROBE_UNIT = f"""[Unit]
Description=credbridge test-harness credential probe
DefaultDependencies=no
Requires=sysinit.target
After=sysinit.target local-fs.target systemd-journald.socket

[Service]
Type=oneshot
ExecStart={PROBE_SCRIPT_PATH}
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
"""
