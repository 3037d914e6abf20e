# microvm.nix's host module, reduced to what services.credbridge reads and sets and what a
# booted host needs from it, shaped like nixos-modules/host/default.nix (microvm.nix commit
# 028b3b87ecd007c4f1ee9f1e5cccbcde8243df8a): microvm.vms (with `config`, `flake`,
# `extraModules`, `autostart`, `restartIfChanged`), the templates microvm@ (User=microvm,
# Group=kvm, ExecStart=.../microvm-run, preStart linking `booted`) and its helper templates
# (tap interfaces, macvtap interfaces, PCI devices, virtiofsd; each skipped when the runner has
# no such script), and per VM the install-microvm-NAME service, the microvm@NAME drop-in
# (restart triggers, `path = mkForce [ ]`) and microvms.target wanting the autostarted VMs.
#
# Not modelled: the guest's evaluation (microvm.nix reads the runner and toplevel from it; here
# they are placeholder store paths named like microvm.nix's, microvm-cloud-hypervisor-NAME and
# nixos-system-NAME) and hence `Type = "notify"` for a runner with a vsock notify socket:
# every VM unit here is Type=simple, microvm.nix's choice without `microvm.vsock.cid`.
{
  lib,
  config,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  inherit (config.microvm) stateDir;
  user = "microvm";
  group = "kvm";
  runnerOf = name: pkgs.runCommand "microvm-cloud-hypervisor-${name}" { } "";
  toplevelOf = name: pkgs.runCommand "nixos-system-${name}" { } "";
  runFromBootedOrCurrent = pkgs.writeTextFile {
    name = "microvm-runFromBootedOrCurrent";
    executable = true;
    text = ''
      #!${pkgs.runtimeShell}
      NAME="$1"
      VM="$2"
      cd "${stateDir}/$VM"

      if [ -e booted ]; then
        exec booted/bin/$NAME
      else
        exec current/bin/$NAME
      fi
    '';
  };
  # microvm.nix's per-VM drop-ins on the helper templates.
  helper = {
    serviceConfig.X-RestartIfChanged = [
      ""
      false
    ];
    path = lib.mkForce [ ];
    overrideStrategy = "asDropin";
  };
in
{
  options.microvm = {
    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/microvms";
    };
    autostart = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    host.useNotifySockets = mkOption {
      type = types.bool;
      default = false;
    };
    host.startupTimeout = mkOption {
      type = types.int;
      default = 150;
    };
    vms = mkOption {
      type = types.attrsOf (
        types.submodule (
          { config, ... }:
          {
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
              autostart = mkOption {
                type = types.bool;
                default = true;
              };
              restartIfChanged = mkOption {
                type = types.bool;
                default = config.config != null;
              };
            };
          }
        )
      );
      default = { };
    };
  };

  config = {
    stub.storeFiles = [ runFromBootedOrCurrent ];
    system.activationScripts.microvm-host = ''
      mkdir -p ${stateDir}
      chown ${user}:${group} ${stateDir}
      chmod g+w ${stateDir}
    '';

    systemd.services =
      builtins.foldl'
        (
          result: name:
          result
          // (
            let
              vm = config.microvm.vms.${name};
              isFlake = vm.flake != null;
            in
            {
              "install-microvm-${name}" = {
                description = "Install MicroVM '${name}'";
                before = [
                  "microvm@${name}.service"
                  "microvm-tap-interfaces@${name}.service"
                  "microvm-pci-devices@${name}.service"
                  "microvm-virtiofsd@${name}.service"
                ];
                partOf = [ "microvm@${name}.service" ];
                wantedBy = [ "microvms.target" ];
                serviceConfig.Type = "oneshot";
                script = ''
                  mkdir -p ${stateDir}/${name}
                  cd ${stateDir}/${name}

                  ln -sTf ${runnerOf name} current
                  chown -h ${user}:${group} . current
                ''
                + lib.optionalString (!isFlake) ''
                  ln -sTf ${toplevelOf name} toplevel
                '';
                serviceConfig.SyslogIdentifier = "install-microvm-${name}";
              };
              "microvm@${name}" = {
                serviceConfig.X-RestartIfChanged = [
                  ""
                  vm.restartIfChanged
                ];
                path = lib.mkForce [ ];
                restartTriggers = [ (toplevelOf name) ];
                overrideStrategy = "asDropin";
                serviceConfig.Type = "simple";
              };
              "microvm-tap-interfaces@${name}" = helper;
              "microvm-pci-devices@${name}" = helper;
              "microvm-virtiofsd@${name}" = helper;
            }
          )
        )
        {
          "microvm-tap-interfaces@" = {
            description = "Setup MicroVM '%i' TAP interfaces";
            before = [ "microvm@%i.service" ];
            partOf = [ "microvm@%i.service" ];
            unitConfig.ConditionPathExists = "${stateDir}/%i/current/bin/tap-up";
            restartIfChanged = false;
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              SyslogIdentifier = "microvm-tap-interfaces@%i";
              ExecStart = "${stateDir}/%i/current/bin/tap-up";
              ExecStop = "${stateDir}/%i/booted/bin/tap-down";
            };
          };
          "microvm-macvtap-interfaces@" = {
            description = "Setup MicroVM '%i' MACVTAP interfaces";
            before = [ "microvm@%i.service" ];
            partOf = [ "microvm@%i.service" ];
            unitConfig.ConditionPathExists = "${stateDir}/%i/current/bin/macvtap-up";
            restartIfChanged = false;
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              SyslogIdentifier = "microvm-macvtap-interfaces@%i";
              ExecStart = "${stateDir}/%i/current/bin/macvtap-up";
              ExecStop = "${stateDir}/%i/booted/bin/macvtap-down";
            };
          };
          "microvm-pci-devices@" = {
            description = "Setup MicroVM '%i' devices for passthrough";
            before = [ "microvm@%i.service" ];
            partOf = [ "microvm@%i.service" ];
            unitConfig.ConditionPathExists = "${stateDir}/%i/current/bin/pci-setup";
            restartIfChanged = false;
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              SyslogIdentifier = "microvm-pci-devices@%i";
              ExecStart = "${stateDir}/%i/current/bin/pci-setup";
            };
          };
          "microvm-virtiofsd@" = {
            description = "VirtioFS daemons for MicroVM '%i'";
            before = [ "microvm@%i.service" ];
            after = [ "local-fs.target" ];
            partOf = [ "microvm@%i.service" ];
            unitConfig.ConditionPathExists = "${stateDir}/%i/current/bin/virtiofsd-run";
            restartIfChanged = false;
            serviceConfig = {
              WorkingDirectory = "${stateDir}/%i";
              ExecStart = "${stateDir}/%i/current/bin/virtiofsd-run";
              ExecReload = "${runFromBootedOrCurrent} virtiofsd-reload %i";
              ExecStop = "${runFromBootedOrCurrent} virtiofsd-shutdown %i";
              LimitNOFILE = 1048576;
              NotifyAccess = "all";
              PrivateTmp = "yes";
              Restart = "always";
              RestartSec = "5s";
              SyslogIdentifier = "microvm-virtiofsd@%i";
              Type = "notify";
            };
          };
          "microvm@" = {
            description = "MicroVM '%i'";
            requires = [
              "microvm-tap-interfaces@%i.service"
              "microvm-macvtap-interfaces@%i.service"
              "microvm-pci-devices@%i.service"
              "microvm-virtiofsd@%i.service"
            ];
            after = [
              "network.target"
              "microvm-tap-interfaces@%i.service"
              "microvm-macvtap-interfaces@%i.service"
              "microvm-pci-devices@%i.service"
              "microvm-virtiofsd@%i.service"
            ];
            unitConfig.ConditionPathExists = "${stateDir}/%i/current/bin/microvm-run";
            restartIfChanged = false;
            preStart = ''
              rm -f booted
              ln -s $(readlink current) booted
            '';
            postStop = ''
              rm booted
            '';
            serviceConfig = {
              Type = if config.microvm.host.useNotifySockets then "notify" else "simple";
              WorkingDirectory = "${stateDir}/%i";
              ExecStart = "${stateDir}/%i/current/bin/microvm-run";
              ExecStop = "${stateDir}/%i/booted/bin/microvm-shutdown";
              TimeoutSec = config.microvm.host.startupTimeout;
              Restart = "always";
              RestartSec = "5s";
              User = user;
              Group = group;
              SyslogIdentifier = "microvm@%i";
              LimitNOFILE = 1048576;
              NotifyAccess = "all";
              LimitMEMLOCK = "infinity";
            };
          };
        }
        (builtins.attrNames config.microvm.vms);

    microvm.autostart = builtins.filter (name: config.microvm.vms.${name}.autostart) (
      builtins.attrNames config.microvm.vms
    );
    systemd.targets.microvms = {
      wantedBy = [ "multi-user.target" ];
      wants = map (name: "microvm@${name}.service") config.microvm.autostart;
    };
  };
}
