{
  description = "credbridge: carry secrets from where they are kept to systemd services and microVMs";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems =
        f:
        lib.genAttrs systems (
          system:
          f (
            import nixpkgs {
              inherit system;
              overlays = [ self.overlays.default ];
            }
          )
        );
    in
    {
      overlays.default = final: prev: {
        credbridge = final.python3Packages.callPackage ./nix/package.nix { };
        credbridge-cloud-hypervisor = final.callPackage ./nix/cloud-hypervisor-wrapper.nix { };
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.credbridge;
        credbridge = pkgs.credbridge;
        cloud-hypervisor-wrapper = pkgs.credbridge-cloud-hypervisor;
      });

      # services.credbridge; without the overlay its package is built from this source tree.
      nixosModules.default = ./nix/module.nix;
      nixosModules.credbridge = ./nix/module.nix;
    };
}
