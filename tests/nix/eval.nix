# Evaluate services.credbridge with lib.evalModules and the stubs; print what tests check.
#   nix-instantiate --eval --strict --json eval.nix --arg libPath PATH --arg config '...'
{
  libPath,
  # The NixOS configuration under test (a module: attrset or function).
  config ? { },
  withMicrovm ? true,
  paths ? { },
  # Evaluate the modules credbridge adds to each microvm.vms.<name> with a guest stub.
  guestConfig ? { },
}:
let
  lib = import libPath;
  pkgs = import ./stub-pkgs.nix { inherit lib paths; };
  eval = lib.evalModules {
    modules = [
      ./stub-nixos.nix
      ../../nix/module.nix
      { _module.args.pkgs = pkgs; }
      config
    ]
    ++ lib.optional withMicrovm ./stub-microvm-host.nix;
  };
  cfg = eval.config;
  failed = map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
  storeFiles = lib.unique (
    lib.concatMap (s: s.jobScripts) (lib.attrValues cfg.systemd.services) ++ cfg.stub.storeFiles
  );
  guest =
    name: vm:
    let
      g = lib.evalModules {
        modules = [
          ./stub-microvm-guest.nix
          guestConfig
        ]
        ++ vm.extraModules;
      };
    in
    {
      package =
        let
          p = g.config.microvm.cloud-hypervisor.package;
        in
        if p == null then
          null
        else
          {
            inherit (p) name version buildCommand;
            path = p.outPath; # `outPath` would make the JSON a string
          };
      assertions = map (a: a.message) (lib.filter (a: !a.assertion) g.config.assertions);
    };
in
{
  assertions = failed;
  result = lib.optionalAttrs (failed == [ ]) {
    services = cfg.systemd.services;
    targets = cfg.systemd.targets;
    globalEnvironment = cfg.systemd.globalEnvironment;
    activation = cfg.system.activationScripts;
    storeFiles = map (f: {
      path = "${f}${f.destination}";
      inherit (f) text executable;
    }) storeFiles;
    etc = lib.mapAttrs (_: e: e.text) cfg.environment.etc;
    tmpfiles = cfg.systemd.tmpfiles.rules;
    wrapper = {
      inherit (cfg.services.credbridge.cloudHypervisorWrapper) name version buildCommand;
      path = cfg.services.credbridge.cloudHypervisorWrapper.outPath;
    };
    vms = if withMicrovm then lib.mapAttrs guest cfg.microvm.vms else null;
  };
}
