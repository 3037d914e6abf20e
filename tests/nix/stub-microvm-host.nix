# microvm.nix's host module, reduced to what services.credbridge reads and sets: microvm.vms
# (with `config`, `flake` and `extraModules`) and the microvm@ template unit, shaped like
# nixos-modules/host/default.nix (User=microvm, Group=kvm, ExecStart=.../microvm-run).
{ lib, config, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.microvm = {
    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/microvms";
    };
    vms = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            config = mkOption {
              type = types.nullOr types.deferredModule;
              default = null;
            };
            flake = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            extraModules = mkOption {
              type = types.listOf types.deferredModule;
              default = [ ];
            };
          };
        }
      );
      default = { };
    };
  };
  config.systemd.services."microvm@" = {
    description = "MicroVM '%i'";
    after = [
      "network.target"
      "microvm-tap-interfaces@%i.service"
      "microvm-virtiofsd@%i.service"
    ];
    unitConfig.ConditionPathExists = "${config.microvm.stateDir}/%i/current/bin/microvm-run";
    serviceConfig = {
      Type = "simple";
      WorkingDirectory = "${config.microvm.stateDir}/%i";
      ExecStart = "${config.microvm.stateDir}/%i/current/bin/microvm-run";
      ExecStop = "${config.microvm.stateDir}/%i/booted/bin/microvm-shutdown";
      TimeoutSec = 150;
      Restart = "always";
      RestartSec = "5s";
      User = "microvm";
      Group = "kvm";
      LimitNOFILE = "1048576";
      NotifyAccess = "all";
      LimitMEMLOCK = "infinity";
    };
  };
}
