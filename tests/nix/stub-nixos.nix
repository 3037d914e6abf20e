# Loosely typed stand-ins for the NixOS options services.credbridge sets or reads, with
# NixOS's merge rules where the module relies on them (unit option lists concatenate), and
# what NixOS derives from a service before writing its unit file (nixos/lib/systemd-lib.nix,
# nixos/lib/systemd-unit-options.nix): the [Unit] keys from `after`/`before`/... in
# `unitConfig`, the default `path` and the PATH it gives, `X-Restart-Triggers` as a store
# file, and job scripts (`script`, `preStart`, `postStop`) as store scripts. The unit text
# itself is written by tests/support/nixeval.py (render_system), as NixOS writes it.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  # NixOS's makeJobScript: `set -e` and the text, in an executable store script
  # (`unit-script-NAME/bin/NAME`, NAME with `@` and `\` replaced).
  jobScript =
    name: text:
    let
      scriptName = lib.replaceStrings [ "\\" "@" ] [ "-" "_" ] name;
    in
    pkgs.writeTextFile {
      name = "unit-script-${scriptName}";
      executable = true;
      destination = "/bin/${scriptName}";
      text = "#!${pkgs.runtimeShell}\nset -e\n\n${text}\n";
    };
  exe = script: "${script}${script.destination}";
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
  service = types.submodule (
    { name, config, ... }:
    {
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
        partOf = unitNames;
        environment = mkOption {
          type = types.attrsOf (types.nullOr types.str);
          default = { };
        };
        path = mkOption {
          type = types.listOf (types.either types.package types.str);
          default = [ ];
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
          type = types.listOf types.unspecified;
          default = [ ];
        };
        reloadTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        restartIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        reloadIfChanged = mkOption {
          type = types.bool;
          default = false;
        };
        stopIfChanged = mkOption {
          type = types.bool;
          default = true;
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
        scriptArgs = mkOption {
          type = types.str;
          default = "";
        };
        preStart = mkOption {
          type = types.lines;
          default = "";
        };
        postStop = mkOption {
          type = types.lines;
          default = "";
        };
        jobScripts = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
          internal = true;
        };
      };
      config = lib.mkMerge [
        {
          path = lib.mkAfter [
            pkgs.coreutils
            pkgs.findutils
            pkgs.gnugrep
            pkgs.gnused
            pkgs.systemd
          ];
          environment.PATH = lib.mkIf (
            config.path != [ ]
          ) "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
          unitConfig =
            lib.optionalAttrs (config.requires != [ ]) { Requires = toString config.requires; }
            // lib.optionalAttrs (config.wants != [ ]) { Wants = toString config.wants; }
            // lib.optionalAttrs (config.after != [ ]) { After = toString config.after; }
            // lib.optionalAttrs (config.before != [ ]) { Before = toString config.before; }
            // lib.optionalAttrs (config.partOf != [ ]) { PartOf = toString config.partOf; }
            // lib.optionalAttrs (config.restartTriggers != [ ]) {
              X-Restart-Triggers = "${pkgs.writeText "X-Restart-Triggers-${name}" (
                toString (lib.flatten config.restartTriggers)
              )}";
            }
            // lib.optionalAttrs (config.reloadTriggers != [ ]) {
              X-Reload-Triggers = "${pkgs.writeText "X-Reload-Triggers-${name}" (
                toString (lib.flatten config.reloadTriggers)
              )}";
            }
            // lib.optionalAttrs (config.description != "") { Description = config.description; }
            // lib.optionalAttrs (config.documentation != [ ]) {
              Documentation = toString config.documentation;
            };
        }
        (lib.mkIf (config.preStart != "") {
          jobScripts = [ (jobScript "${name}-pre-start" config.preStart) ];
          serviceConfig.ExecStartPre = [ (exe (jobScript "${name}-pre-start" config.preStart)) ];
        })
        (lib.mkIf (config.script != "") {
          jobScripts = [ (jobScript "${name}-start" config.script) ];
          serviceConfig.ExecStart = exe (jobScript "${name}-start" config.script) + " " + config.scriptArgs;
        })
        (lib.mkIf (config.postStop != "") {
          jobScripts = [ (jobScript "${name}-post-stop" config.postStop) ];
          serviceConfig.ExecStopPost = exe (jobScript "${name}-post-stop" config.postStop);
        })
      ];
    }
  );
  target = types.submodule (
    { name, config, ... }:
    {
      options = {
        description = mkOption {
          type = types.str;
          default = "";
        };
        wantedBy = unitNames;
        wants = unitNames;
        after = unitNames;
        before = unitNames;
        unitConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
      };
      config.unitConfig =
        lib.optionalAttrs (config.wants != [ ]) { Wants = toString config.wants; }
        // lib.optionalAttrs (config.after != [ ]) { After = toString config.after; }
        // lib.optionalAttrs (config.before != [ ]) { Before = toString config.before; }
        // lib.optionalAttrs (config.description != "") { Description = config.description; };
    }
  );
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
    systemd.targets = mkOption {
      type = types.attrsOf target;
      default = { };
    };
    systemd.globalEnvironment = mkOption {
      type = types.attrsOf (types.nullOr types.str);
      default = { };
    };
    # Store files that unit files name (scripts), for tests that install the rendered units.
    stub.storeFiles = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    system.activationScripts = mkOption {
      type = types.attrsOf types.str;
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
