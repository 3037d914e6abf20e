# nix/package.nix called like python3Packages.callPackage would, against stub packages.
{
  libPath,
  extras ? null,
}:
let
  lib = import libPath;
  pkgs = import ./stub-pkgs.nix { inherit lib; };
  pkg = pkgs.python3Packages.callPackage ../../nix/package.nix (
    lib.optionalAttrs (extras != null) { inherit extras; }
  );
  a = pkg.passthru.attrs;
  names = map (d: d.pname);
in
{
  inherit (a)
    pname
    version
    pyproject
    pythonImportsCheck
    doCheck
    makeWrapperArgs
    ;
  inherit (pkg) name;
  dependencies = names a.dependencies;
  build-system = names a.build-system;
  optional-dependencies = lib.mapAttrs (_: names) a.optional-dependencies;
  mainProgram = a.meta.mainProgram;
  license = a.meta.license.spdxId;
  srcIsFiltered = a.src ? filter || a.src ? outPath;
}
