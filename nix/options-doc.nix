# The options of services.credbridge, as data for docs/nixos.md (nix/options_doc.py).
#   nix-instantiate --eval --strict --json nix/options-doc.nix --arg libPath <nixpkgs/lib>
{ libPath }:
let
  lib = import libPath;
  eval = lib.evalModules {
    modules = [
      ./module.nix
      {
        # Option declarations only: nothing here reads pkgs or the NixOS options it sets.
        _module.args.pkgs = throw "the option documentation must not need pkgs";
        _module.check = false;
      }
    ];
  };
  text = value: if value == null then null else value.text or (builtins.toJSON value);
in
map (option: {
  inherit (option) name description type readOnly;
  default = text (option.default or null);
  example = text (option.example or null);
}) (lib.filter (o: o.visible && !o.internal) (lib.optionAttrSetToDocList eval.options.services.credbridge))
