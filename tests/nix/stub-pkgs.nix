# A package set with only what the module, package.nix, the wrapper package and the flake use.
# Output paths come from `paths` so tests can point them at real directories
# (systemd-analyze verify checks that ExecStart= programs exist; the wrapper's build script is
# run for real). `overlays` are applied like nixpkgs applies them.
{
  lib,
  paths ? { },
  overlays ? [ ],
}:
let
  drv =
    name: attrs:
    {
      type = "derivation";
      inherit name;
      outPath = paths.${name} or "/nix/store/00000000000000000000000000000000-${name}";
      meta = { };
    }
    // attrs;
  callPackageWith =
    scope: f: args:
    let
      fn = if builtins.isFunction f then f else import f;
    in
    fn (builtins.intersectAttrs (builtins.functionArgs fn) scope // args);
  python =
    final:
    let
      scope =
        final
        // lib.genAttrs [
          "setuptools"
          "pluggy"
          "click"
          "cryptography"
          "hvac"
          "requests"
          "boto3"
        ] (name: drv "python3-${name}" { pname = name; })
        // {
          buildPythonApplication =
            attrs:
            drv "${attrs.pname}-${attrs.version}" {
              passthru.attrs = attrs;
              inherit (attrs) meta;
            };
        };
    in
    scope // { callPackage = callPackageWith scope; };
  base = final: {
    inherit lib;
    credbridge = drv "credbridge" { meta.mainProgram = "credbridge"; };
    cloud-hypervisor = drv "cloud-hypervisor" { version = "48.0"; };
    virtiofsd = drv "virtiofsd" { meta.mainProgram = "virtiofsd"; };
    sops = drv "sops" { };
    age = drv "age" { };
    openssl = drv "openssl" { meta.mainProgram = "openssl"; };
    # NixOS's default service PATH (nixos/lib/systemd-lib.nix, stage2ServiceConfig).
    coreutils = drv "coreutils" { };
    findutils = drv "findutils" { };
    gnugrep = drv "gnugrep" { };
    gnused = drv "gnused" { };
    systemd = drv "systemd" { };
    runtimeShell = paths.runtimeShell or "/bin/sh";
    # Text files in the store; `text`/`executable`/`destination` stay readable so tests can
    # write the file where the store path points (tests/support/nixeval.py).
    writeTextFile =
      {
        name,
        text,
        executable ? false,
        destination ? "",
      }:
      drv name {
        # Distinct contents, distinct paths (all other stub outputs share one fake hash).
        outPath =
          paths.${name}
            or "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" "${name}\n${destination}\n${text}")}-${name}";
        inherit text executable destination;
        storeFile = true;
      };
    writeText = name: text: final.writeTextFile { inherit name text; };
    writeShellScriptBin =
      name: text:
      final.writeTextFile {
        inherit name;
        executable = true;
        destination = "/bin/${name}";
        text = "#!${final.runtimeShell}\n${text}";
      };
    runCommand =
      name: env: buildCommand:
      drv name (
        env
        // {
          inherit buildCommand;
          builder = "runCommand";
        }
      );
    callPackage = callPackageWith final;
    python3Packages = python final;
  };
in
lib.fix (lib.foldl' (lib.flip lib.extends) base overlays)
