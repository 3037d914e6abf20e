# Loosely typed stand-ins for the NixOS options services.credbridge sets or reads, with
# NixOS's merge rules where the module relies on them (unit option lists concatenate).
{ lib, ... }:
let
  inherit (lib) mkOption types;
  # nixos/lib/systemd-unit-options.nix: a unit option is an atom or a list of atoms; list
  # definitions from several modules concatenate.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };
  unitNames = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  service = types.submodule {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.str;
        default = "";
      };
      documentation = unitNames;
      wantedBy = unitNames;
      requiredBy = unitNames;
      before = unitNames;
      after = unitNames;
      wants = unitNames;
      requires = unitNames;
      environment = mkOption {
        type = types.attrsOf types.str;
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      restartTriggers = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      overrideStrategy = mkOption {
        type = types.enum [
          "asDropinIfExists"
          "asDropin"
        ];
        default = "asDropinIfExists";
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    environment.etc = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.text = mkOption {
            type = types.nullOr types.lines;
            default = null;
          };
          options.source = mkOption {
            type = types.nullOr types.str;
            default = null;
          };
        }
      );
      default = { };
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    systemd.services = mkOption {
      type = types.attrsOf service;
      default = { };
    };
    systemd.units = mkOption {
      type = types.attrsOf types.unspecified;
      default = { };
    };
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    users = mkOption {
      type = types.attrsOf types.unspecified;
      default = { };
    };
  };
}
