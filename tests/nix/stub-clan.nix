# clan-core's NixOS options that docs/nixos.md's clan migration reads or sets, loosely typed:
# clan.core.settings (the clan's directory, the machine's name) and clan.core.vars.generators
# with each file's `path` as clan's sops backend sets it: sops-nix's /run/secrets/vars/GEN/FILE
# (clan-core nixosModules/clanCore/vars/secret/sops/default.nix, commit 08a5ad08).
{ lib, ... }:
let
  inherit (lib) mkOption types;
  generator =
    { name, ... }:
    let
      generatorName = name;
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
                        "/run/secrets/vars/${generatorName}/${name}"
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
