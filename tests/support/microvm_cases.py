"""Option combinations of microvm.nix's cloud-hypervisor runner, for tests/launchers/test_ch_wrapper*.py.

Each is a Nix module body for ``microvm.*`` (evaluated by tests/support/microvm_runner.py) and
the system; ``REFUSED_BY_RUNNER`` are the ones microvm.nix itself refuses, with a piece of
its message. Together they cover every option of options.nix that changes the
cloud-hypervisor command line.
"""

from __future__ import annotations

TAP = '{ type = "tap"; id = "vm-tap0"; mac = "02:00:00:00:00:01"; }'
MACVTAP = (
    '{ type = "macvtap"; id = "vm-mvt0"; mac = "02:00:00:00:00:02"; '
    'macvtap.link = "eth0"; macvtap.mode = "bridge"; }'
)
STORE_SHARE = (
    '{ proto = "virtiofs"; tag = "ro-store"; source = "/nix/store"; '
    'mountPoint = "/nix/.ro-store"; }'
)
DATA_SHARE = (
    '{ proto = "virtiofs"; tag = "data"; source = "/var/lib/data"; mountPoint = "/data"; '
    'socket = "data.sock"; }'
)
VOLUME = '{ image = "var.img"; mountPoint = "/var"; size = 1024; }'
VOLUME_QCOW2 = (
    '{ image = "/srv/vm/data.qcow2"; mountPoint = "/data"; size = 1024; serial = "data-01"; '
    'direct = true; readOnly = true; imageType = "qcow2"; autoCreate = false; }'
)
PCI_DEVICE = '{ bus = "pci"; path = "0000:01:00.0"; }'

#: name -> (microvm options as a Nix attrset body, or a whole module ``{ pkgs, ... }: {...}``,
#: system)
RUNNER_CASES: dict[str, tuple[str, str]] = {
    "defaults": ("", "x86_64-linux"),
    "vcpu-mem": ("microvm.vcpu = 4; microvm.mem = 2048;", "x86_64-linux"),
    "balloon": (
        "microvm.balloon = true; microvm.initialBalloonMem = 128; microvm.deflateOnOOM = true;",
        "x86_64-linux",
    ),
    "hotplug-memory": (
        "microvm.hotplugMem = 4096; microvm.hotpluggedMem = 1024;",
        "x86_64-linux",
    ),
    "hugepages": ("microvm.hugepageMem = true;", "x86_64-linux"),
    "store-share": (f"microvm.shares = [ {STORE_SHARE} ];", "x86_64-linux"),
    "shares-hugepages": (
        f"microvm.shares = [ {STORE_SHARE} {DATA_SHARE} ]; microvm.hugepageMem = true;",
        "x86_64-linux",
    ),
    "volumes": (f"microvm.volumes = [ {VOLUME} {VOLUME_QCOW2} ];", "x86_64-linux"),
    "volumes-multiqueue": (
        f"microvm.vcpu = 2; microvm.volumes = [ {VOLUME} ];",
        "x86_64-linux",
    ),
    "tap": (f"microvm.interfaces = [ {TAP} ];", "x86_64-linux"),
    "tap-multiqueue": (f"microvm.vcpu = 2; microvm.interfaces = [ {TAP} ];", "x86_64-linux"),
    "macvtap": (f"microvm.vcpu = 2; microvm.interfaces = [ {TAP} {MACVTAP} ];", "x86_64-linux"),
    "pci-device": (f"microvm.devices = [ {PCI_DEVICE} ];", "x86_64-linux"),
    "vsock-notify": ("microvm.vsock.cid = 5;", "x86_64-linux"),
    "kernel-params-shell": (
        'microvm.kernelParams = [ "a=$(id)" "b;c" "d=\\"x y\\"" "e=\'q\'" "f=`w`" "g=\\${HOME}" ];',
        "x86_64-linux",
    ),
    "oem-strings": (
        'microvm.cloud-hypervisor.platformOEMStrings = [ "io.systemd.credential:hello=world" ]; '
        "microvm.vsock.cid = 6;",
        "x86_64-linux",
    ),
    "extra-args": (
        "microvm.vcpu = 2; microvm.cloud-hypervisor.extraArgs = [ "
        '"--cpus" "max=4,topology=1:2:1:2,kvm_hyperv=on,max_phys_bits=40,'
        'affinity=[0@[0-1],1@[2]],nested=off,core_scheduling=vcpu" '
        '"--vsock" "cid=7,socket=own.vsock" '
        '"--platform" "serial_number=ABC,uuid=1b4e28ba-2fa1-11d2-883f-0016d3cca427" '
        '"--tpm" "socket=/run/swtpm/vm.sock" '
        '"--event-monitor" "path=/run/vm-events.json" '
        '"--rng" "src=/dev/urandom" "--pvpanic" ];',
        "x86_64-linux",
    ),
    "extra-args-console": (
        'microvm.cloud-hypervisor.extraArgs = [ "--serial" "file=serial.log" "--console" "pty" ];',
        "x86_64-linux",
    ),
    "extra-args-script": (
        'microvm.extraArgsScript = "echo --balloon size=64M --tpm socket=tpm.sock";',
        "x86_64-linux",
    ),
    "no-api-socket": ("microvm.socket = null;", "x86_64-linux"),
    "graphics": ("microvm.graphics.enable = true;", "x86_64-linux"),
    "aarch64": (
        f"microvm.vcpu = 2; microvm.shares = [ {STORE_SHARE} ]; microvm.interfaces = [ {TAP} ];",
        "aarch64-linux",
    ),
    # cloud-hypervisor 30-35 took `--disk a --disk b` (argh): the runner emits that syntax for
    # a package of those versions.
    "argh-syntax": (
        "{ pkgs, ... }: { microvm.cloud-hypervisor.package = "
        'pkgs.cloud-hypervisor // { version = "34.0"; }; '
        f"microvm.volumes = [ {VOLUME} ]; microvm.interfaces = [ {TAP} ]; }}",
        "x86_64-linux",
    ),
    "everything": (
        f"microvm.vcpu = 2; microvm.mem = 1024; microvm.balloon = true; "
        f"microvm.shares = [ {DATA_SHARE} ]; microvm.volumes = [ {VOLUME_QCOW2} ]; "
        f"microvm.interfaces = [ {TAP} ]; microvm.vsock.cid = 9; "
        f'microvm.kernelParams = [ "quiet" ];',
        "x86_64-linux",
    ),
}

#: name -> (options, system, a piece of microvm.nix's own refusal)
REFUSED_BY_RUNNER: dict[str, tuple[str, str, str]] = {
    "share-9p": (
        'microvm.shares = [ { proto = "9p"; tag = "x"; source = "/x"; mountPoint = "/x"; } ];',
        "x86_64-linux",
        "supports only shares that are virtiofs",
    ),
    "user-interface": (
        'microvm.interfaces = [ { type = "user"; id = "u"; mac = "02:00:00:00:00:09"; } ];',
        "x86_64-linux",
        "Unsupported interface type user",
    ),
    "bridge-interface": (
        'microvm.interfaces = [ { type = "bridge"; id = "b"; bridge = "br0"; '
        'mac = "02:00:00:00:00:0a"; } ];',
        "x86_64-linux",
        "Unsupported interface type bridge",
    ),
    "usb-device": (
        'microvm.devices = [ { bus = "usb"; path = "vendorid=1,productid=2"; } ];',
        "x86_64-linux",
        "USB passthrough is not supported",
    ),
    "user-set": ('microvm.user = "microvm";', "x86_64-linux", "will not change user"),
    "credential-files": (
        'microvm.credentialFiles = { KEY = "/run/key"; };',
        "x86_64-linux",
        "does not support credentialFiles",
    ),
    "forward-ports": (
        "microvm.forwardPorts = [ { from = \"host\"; host.port = 2222; guest.port = 22; } ];",
        "x86_64-linux",
        "`config.microvm.forwardPorts` works only with qemu",
    ),
    "cpus-boot-twice": (
        'microvm.cloud-hypervisor.extraArgs = [ "--cpus" "boot=2" ];',
        "x86_64-linux",
        "Cannot set `microvm.vcpu` and --cpus",
    ),
}
