# microvm.nix's guest options the extra module credbridge adds to a VM sets or reads.
{ lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options = {
    microvm.hypervisor = mkOption {
      type = types.str;
      default = "qemu";
    };
    microvm.cloud-hypervisor.package = mkOption {
      type = types.nullOr types.package;
      default = null;
    };
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
  };
}
