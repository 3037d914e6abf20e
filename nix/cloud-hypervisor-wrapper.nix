# A cloud-hypervisor package whose bin/cloud-hypervisor is credbridge's wrapper
# (credbridge-cloud-hypervisor, docs/nixos.md). microvm.nix's runner execs
# `${package}/bin/cloud-hypervisor` with the VM on the command line, reads `package.version`
# (argument syntax) and runs `${package}/bin/ch-remote` (balloon): all kept.
{
  lib,
  runCommand,
  runtimeShell,
  credbridge,
  cloud-hypervisor,
}:

runCommand "credbridge-cloud-hypervisor-${cloud-hypervisor.version}"
  {
    inherit (cloud-hypervisor) version;
    passthru.unwrapped = cloud-hypervisor;
    meta = {
      description = "cloud-hypervisor started by credbridge, which adds the VM's credentials";
      mainProgram = "cloud-hypervisor";
      platforms = lib.platforms.linux;
    };
  }
  ''
    mkdir -p $out/bin
    for tool in ${cloud-hypervisor}/bin/*; do
      ln -s "$tool" "$out/bin/$(basename "$tool")"
    done
    rm -f $out/bin/cloud-hypervisor
    cat > $out/bin/cloud-hypervisor <<EOF
    #!${runtimeShell}
    # microvm.nix runs this as cloud-hypervisor; credbridge starts the real one (API only).
    export CREDBRIDGE_CLOUD_HYPERVISOR=${cloud-hypervisor}/bin/cloud-hypervisor
    exec ${credbridge}/bin/credbridge-cloud-hypervisor "\$@"
    EOF
    chmod 0555 $out/bin/cloud-hypervisor
  ''
