# microvm.nix's real cloud-hypervisor runner, evaluated without a Nix store.
#
# `lib.evalModules` over microvm.nix's own options.nix and asserts.nix (vendored in
# ../shared/vendor/microvm.nix), then its own lib/runner.nix for cloud-hypervisor, with a stub
# package set: derivations are attrsets with an outPath, and `writeShellScript` returns its text
# between marker lines, so the result holds the exact `microvm-run` script microvm.nix writes.
# Only options microvm.nix takes from the rest of NixOS (hostName, the kernel, the initrd,
# `assertions`, the store disk) are declared here.
{
  libPath,
  microvmPath,
  config ? { },
  system ? "x86_64-linux",
  # Output paths for packages (tests point cloud-hypervisor at a program that prints its argv).
  paths ? { },
}:
let
  lib = import libPath;
  drv =
    name: attrs:
    {
      type = "derivation";
      inherit name;
      outPath = paths.${name} or "/nix/store/00000000000000000000000000000000-${name}";
      meta = { };
    }
    // attrs;
  pkgs = lib.fix (final: {
    inherit lib;
    _type = "pkgs";
    stdenv.hostPlatform = {
      inherit system;
      isLinux = true;
      isDarwin = false;
      linux-kernel.target = if system == "aarch64-linux" then "Image" else "bzImage";
    };
    buildPackages = final;
    cloud-hypervisor = drv "cloud-hypervisor" { version = "53.0"; };
    cloud-hypervisor-graphics = drv "cloud-hypervisor-graphics" { version = "53.0"; };
    crosvm = drv "crosvm" { };
    socat = drv "socat" { };
    curl = drv "curl" { };
    util-linux = drv "util-linux" { };
    coreutils = drv "coreutils" { };
    e2fsprogs = drv "e2fsprogs" { };
    xfsprogs = drv "xfsprogs" { };
    btrfs-progs = drv "btrfs-progs" { };
    dosfstools = drv "dosfstools" { };
    systemd = drv "systemd" { };
    gnused = drv "gnused" { };
    gawk = drv "gawk" { };
    python3 = drv "python3" { meta.mainProgram = "python3"; };
    virtiofsd = drv "virtiofsd" { };
    qemu = drv "qemu" { };
    qemu_kvm = drv "qemu" { };
    writeShellScript = name: text: "\n#credbridge-begin ${name}\n${text}\n#credbridge-end ${name}\n";
    runCommand =
      name: env: buildCommand:
      drv name (env // { inherit buildCommand; });
  });
  kernel = drv "linux" {
    version = "6.12.0";
    dev = drv "linux-dev" { };
    out = drv "linux" { };
  };
  nixos = {
    options = {
      networking.hostName = lib.mkOption {
        type = lib.types.str;
        default = "test-vm";
      };
      boot.kernelPackages = lib.mkOption { default.kernel = kernel; };
      system.build = lib.mkOption { default = { }; };
      system.boot.loader.initrdFile = lib.mkOption { default = "initrd"; };
      nix.optimise.automatic = lib.mkOption { default = false; };
      assertions = lib.mkOption { default = [ ]; };
      warnings = lib.mkOption { default = [ ]; };
      # microvm.nix's store-disk module (not vendored: it builds the image) declares this.
      microvm.storeDisk = lib.mkOption { default = "/nix/store/00000000000000000000000000000000-store-disk.erofs"; };
    };
    config.system.build = {
      initialRamdisk = drv "initrd" { };
      toplevel = drv "nixos-system" { };
    };
  };
  evaluated = lib.evalModules {
    modules = [
      (microvmPath + "/nixos-modules/microvm/options.nix")
      (microvmPath + "/nixos-modules/microvm/asserts.nix")
      nixos
      { _module.args.pkgs = pkgs; }
      { microvm.hypervisor = "cloud-hypervisor"; }
      config
    ];
  };
  cfg = evaluated.config;
  failed = map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
  runner = import (microvmPath + "/lib/runner.nix") {
    inherit pkgs;
    microvmConfig = cfg.microvm // {
      inherit (cfg.networking) hostName;
      hypervisor = "cloud-hypervisor";
    };
    toplevel = cfg.system.build.toplevel;
  };
in
# A refusal of the runner (`throw`) makes nix-instantiate fail with microvm.nix's message.
if failed != [ ] then { assertions = failed; } else { inherit (runner) buildCommand; }
