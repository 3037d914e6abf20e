# flake.nix's outputs, called with a stub nixpkgs input (its default.nix is written by the test).
{ libPath, stubNixpkgs }:
let
  lib = import libPath;
  flake = import ../../flake.nix;
  nixpkgs = {
    inherit lib;
    outPath = stubNixpkgs;
  };
  self = outputs // {
    outPath = ../..;
  };
  outputs = flake.outputs { inherit self nixpkgs; };
  pkgs = outputs.packages.x86_64-linux;
in
{
  inherit (flake) description;
  inputs = lib.mapAttrs (_: i: i.url) flake.inputs;
  outputNames = lib.attrNames outputs;
  systems = lib.attrNames outputs.packages;
  packages = lib.mapAttrs (_: p: p.name) pkgs;
  wrapperRunsCredbridge = lib.hasInfix "${pkgs.credbridge}/bin/credbridge-cloud-hypervisor" pkgs.cloud-hypervisor-wrapper.buildCommand;
  modules = lib.mapAttrs (_: m: toString m == toString ../../nix/module.nix) outputs.nixosModules;
  overlay = lib.attrNames (outputs.overlays.default { } { });
}
