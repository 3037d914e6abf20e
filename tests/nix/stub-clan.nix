# clan-core's NixOS options that docs/nixos.md's clan migration reads or sets, loosely typed:
# clan.core.settings (the clan's directory, the machine's name) and clan.core.vars.generators
# with each file's `path` as clan's sops backend sets it: sops-nix's secret named
# vars/REL_DIR/FILE, so /run/secrets/vars/per-machine/MACHINE/GEN/FILE (shared:
# /run/secrets/vars/shared/GEN/FILE) (clan-core nixosModules/clanCore/vars/secret/sops/
# generators-to-sops.nix, commit 0cb84e7d; before it, /run/secrets/vars/GEN/FILE).
{ lib, config, ... }:
let
  inherit (lib) mkOption types;
  generator =
    { name, config, ... }:
    let
      generatorName = name;
      generator = config;
    in
    {
      options = {
        share = mkOption {
          type = types.bool;
          default = false;
        };
        script = mkOption {
          type = types.str;
          default = "";
        };
        runtimeInputs = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        files = mkOption {
          type = types.attrsOf (
            types.submodule (
              { name, config, ... }:
              {
                options = {
                  secret = mkOption {
                    type = types.bool;
                    default = true;
                  };
                  deploy = mkOption {
                    type = types.bool;
                    default = true;
                  };
                  path = mkOption {
                    type = types.str;
                    readOnly = true;
                    default =
                      if config.secret then
                        "/run/secrets/vars/${relDir generator.share}/${generatorName}/${name}"
                      else
                        throw "public vars have a value, not a path";
                  };
                };
              }
            )
          );
          default = { };
        };
      };
    };
  machine = config.clan.core.settings.machine.name;
  relDir = share: if share then "shared" else "per-machine/${machine}";
in
{
  options.clan.core = {
    settings.directory = mkOption {
      type = types.either types.path types.str;
    };
    settings.machine.name = mkOption {
      type = types.str;
    };
    vars.generators = mkOption {
      type = types.attrsOf (types.submodule generator);
      default = { };
    };
  };
}
