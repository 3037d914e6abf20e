# services.credbridge: credbridge as a NixOS module (docs/nixos.md).
#
# The module writes references, never values: /etc/credbridge/config.json (a Nix store file,
# world-readable) names where each secret is kept; credbridge-deliver.service resolves them at
# boot as root into /run/credstore (tmpfs), and the consuming units load them with
# LoadCredential=. For microvm.nix VMs the VM unit loads them the same way and the
# cloud-hypervisor wrapper hands them to the VM as SMBIOS OEM strings through the API socket.
{
  config,
  lib,
  options,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkOption
    types
    mkIf
    mkMerge
    mkDefault
    literalExpression
    ;

  cfg = config.services.credbridge;
  thisFile = toString ./module.nix;
  configPath = "/etc/credbridge/config.json";

  # Schemes of the built-in sources (tests/nix/test_nixos_module.py keeps this list equal to the
  # plugins' own); `networked` ones make the deliver unit wait for network-online.target.
  builtinSchemes = {
    credential.networked = false;
    env.networked = false;
    file.networked = false;
    generate.networked = false;
    stored.networked = false;
    vault.networked = true;
    "aws-sm".networked = true;
    "aws-ssm".networked = true;
    "aws-sts".networked = true;
    # sops files are local, but their keys may live in a KMS (AWS, GCP, Azure, Vault transit).
    sops.networked = true;
    # clan vars: files in the clan's directory, decrypted with the machine's age key.
    "clan-vars".networked = false;
  };

  # Settings keys that hold a secret inline: in `settings` they would land in the Nix store.
  inlineSecretKeys = [
    "token"
    "password"
    "secret_access_key"
    "session_token"
  ];

  credentialNameRegex = "[A-Za-z0-9_.@-]{1,255}";
  unitNameRegex = "[A-Za-z0-9_.@:\\\\-]{1,255}";
  onChangeValues = [
    "restart"
    "reload"
    "reload-or-restart"
    "none"
  ];

  # A JSON value, like (pkgs.formats.json { }).type but without pkgs.
  jsonValue =
    let
      valueType =
        types.nullOr (
          types.oneOf [
            types.bool
            types.int
            types.float
            types.str
            (types.lazyAttrsOf valueType)
            (types.listOf valueType)
          ]
        )
        // {
          description = "JSON value";
        };
    in
    valueType;

  credentialModule =
    { name, ... }:
    {
      options = {
        ref = mkOption {
          type = types.str;
          example = "vault:secret/app#password";
          description = ''
            Where the value is kept: a credbridge reference (`SCHEME:PATH[?OPTIONS][#SELECTOR]`,
            docs/references.md). Only the reference goes into the Nix store, never the value.
          '';
        };
        optional = mkOption {
          type = types.bool;
          default = false;
          description = ''
            A missing value (not found) is skipped instead of failing the delivery; the unit
            then starts without it (credbridge puts an empty directory where its file would be).
          '';
        };
        mode = mkOption {
          type = types.nullOr (types.strMatching "0?[0-7]{3}");
          default = null;
          example = "0440";
          description = ''
            Mode of the credstore file (default `0400`). Read bits only; never world-readable.
          '';
        };
        owner = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Owner of the credstore file (default root).";
        };
        group = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Group of the credstore file (default root).";
        };
      };
    };

  credentialType = types.coercedTo types.str (ref: { inherit ref; }) (
    types.submodule credentialModule
  );

  credentialsOption = example: mkOption {
    type = types.attrsOf credentialType;
    default = { };
    inherit example;
    description = ''
      The credentials, by name: a reference string, or an attribute set with `ref` and the
      per-credential options. Names follow systemd's credential name rules.
    '';
  };

  onChangeOption = mkOption {
    type = types.nullOr (types.enum onChangeValues);
    default = null;
    description = ''
      What `credbridge deliver` asks systemd to do with the unit when its delivered credentials
      changed (the target's `on_change`; `null` leaves it to `[defaults] on_change` and the
      command line).
    '';
  };

  unitModule =
    { name, ... }:
    {
      options = {
        credentials = credentialsOption (literalExpression ''
          {
            db-password = "vault:secret/app#password";
            api-token = { ref = "file:/var/lib/secrets/app-token"; mode = "0440"; group = "app"; };
          }
        '');
        encrypted = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Deliver the values encrypted with `systemd-creds encrypt` (host key, TPM2 where
            present) to `services.credbridge.encryptedDirectory`; the unit gets
            `LoadCredentialEncrypted=` lines.
          '';
        };
        onChange = onChangeOption;
      };
    };

  vmModule =
    { name, ... }:
    {
      options = {
        credentials = credentialsOption (literalExpression ''
          { API_KEY = "generate:base64?bytes=32"; }
        '');
        sink = mkOption {
          type = types.enum [
            "oem-strings"
            "virtiofs"
          ];
          default = "oem-strings";
          description = ''
            How the credentials reach the guest: SMBIOS OEM strings (imported by the guest's
            systemd) or a read-only virtiofs share (docs/vm.md).
          '';
        };
        unit = mkOption {
          type = types.strMatching unitNameRegex;
          default = "microvm@${name}.service";
          defaultText = literalExpression ''"microvm@''${name}.service"'';
          description = "The host unit that runs the VM and loads its credentials.";
        };
        wrapRunner = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Add a module to `microvm.vms.${name}` that points its
            `microvm.cloud-hypervisor.package` at the credbridge wrapper. Needs the VM declared
            with `microvm.vms.${name}.config`. Set it to `false` for a VM built from a flake or
            managed with the `microvm` command, and set
            `microvm.cloud-hypervisor.package = pkgs.credbridge-cloud-hypervisor` in the VM's
            own configuration (the flake's overlay provides it).
          '';
        };
        onChange = onChangeOption;
      };
    };

  # ------------------------------------------------------------------ derived values

  serviceName = unit: lib.removeSuffix ".service" unit;
  escapeUnitValue = lib.replaceStrings [ "%" ] [ "%%" ];

  credentialJSON =
    c:
    {
      inherit (c) ref;
    }
    // lib.optionalAttrs c.optional { optional = true; }
    // lib.optionalAttrs (c.mode != null) { inherit (c) mode; }
    // lib.optionalAttrs (c.owner != null) { inherit (c) owner; }
    // lib.optionalAttrs (c.group != null) { inherit (c) group; };

  unitTargetJSON =
    u:
    {
      credentials = lib.mapAttrs (_: credentialJSON) u.credentials;
    }
    // lib.optionalAttrs u.encrypted {
      sink = {
        type = "credstore";
        encrypt = "auto";
        directory = cfg.encryptedDirectory;
      };
    }
    // lib.optionalAttrs (u.onChange != null) { on_change = u.onChange; };

  # A VM's credentials are delivered to its host unit like any unit's, and read inside that
  # unit (credential:NAME, from $CREDENTIALS_DIRECTORY) by the cloud-hypervisor wrapper.
  vmHostTargetJSON = vm: unitTargetJSON (vm // { encrypted = false; });
  vmTargetJSON =
    name: vm:
    {
      kind = "vm";
      inherit (vm) sink;
      credentials = lib.mapAttrs (cname: _: "credential:${cname}") vm.credentials;
    }
    // lib.optionalAttrs (vm.sink == "virtiofs") {
      launcher = {
        type = "cloud-hypervisor";
        virtiofsd = lib.getExe' cfg.virtiofsdPackage "virtiofsd";
      };
    };

  hostUnits =
    lib.mapAttrs' (unit: u: lib.nameValuePair unit u) cfg.units
    // lib.mapAttrs' (
      _: vm:
      lib.nameValuePair vm.unit (
        vm
        // {
          encrypted = false;
        }
      )
    ) cfg.vms;

  consumerUnits = lib.attrNames hostUnits;

  generatedTargets =
    lib.mapAttrs (_: unitTargetJSON) cfg.units
    // lib.mapAttrs' (_: vm: lib.nameValuePair vm.unit (vmHostTargetJSON vm)) cfg.vms
    // lib.mapAttrs vmTargetJSON cfg.vms;

  # LoadCredential=/LoadCredentialEncrypted=, as `credbridge unit` prints them for the same
  # target (an optional credential's missing file is an empty directory credbridge made).
  credentialSettings =
    unit: u:
    let
      directory = if u.encrypted then cfg.encryptedDirectory else cfg.credstoreDirectory;
      directive = if u.encrypted then "LoadCredentialEncrypted" else "LoadCredential";
      names = lib.attrNames u.credentials;
    in
    lib.filterAttrs (_: v: v != [ ]) {
      ${directive} = map (n: "${n}:${escapeUnitValue "${directory}/${unit}/${n}"}") names;
    };

  allCredentials =
    lib.concatLists (
      lib.mapAttrsToList (
        unit: u:
        lib.mapAttrsToList (cname: c: {
          inherit cname c;
          where = ''services.credbridge.units."${unit}".credentials."${cname}"'';
        }) u.credentials
      ) cfg.units
    )
    ++ lib.concatLists (
      lib.mapAttrsToList (
        name: vm:
        lib.mapAttrsToList (cname: c: {
          inherit cname c;
          where = ''services.credbridge.vms.${name}.credentials."${cname}"'';
        }) vm.credentials
      ) cfg.vms
    );

  # The AWS forms credbridge reads as aws-sm:/aws-ssm: references (docs/references.md).
  pastedScheme =
    ref:
    if builtins.match "[{][{]resolve:secretsmanager:.*[}][}]" ref != null then
      "aws-sm"
    else if builtins.match "[{][{]resolve:ssm(-secure)?:.*[}][}]" ref != null then
      "aws-ssm"
    else if builtins.match "arn:[a-z-]+:secretsmanager:.*" ref != null then
      "aws-sm"
    else if builtins.match "arn:[a-z-]+:ssm:.*" ref != null then
      "aws-ssm"
    else
      null;
  schemeOf =
    ref:
    let
      pasted = pastedScheme ref;
    in
    if pasted != null then pasted else lib.head (lib.splitString ":" ref);
  referenceProblem =
    ref:
    let
      parts = builtins.match "([a-z][a-z0-9+.-]*):([^?#]*)(\\?[^#]*)?(#.*)?" ref;
      scheme = schemeOf ref;
    in
    if ref != lib.trim ref || lib.hasInfix "\n" ref then
      "must be one line without surrounding spaces"
    else if pastedScheme ref != null then
      (
        if cfg.schemes ? ${scheme} then
          null
        else
          "is read as a ${scheme}: reference, and ${scheme} is not a known scheme"
      )
    else if builtins.match "[a-z][a-z0-9+.-]*:.*" ref == null then
      "missing 'SCHEME:' prefix (e.g. 'file:/path')"
    else if parts == null then
      "is not SCHEME:PATH[?OPTIONS][#SELECTOR]"
    else if lib.elemAt parts 1 == "" then
      "has an empty path"
    else if lib.hasPrefix "//" (lib.elemAt parts 1) then
      "is URL syntax ('${scheme}://'), which references do not use: write ${scheme}:PATH (e.g. 'vault:secret/app', 'file:/etc/x')"
    else if lib.elemAt parts 3 == "#" then
      "has an empty selector after '#'"
    else if scheme == "target" then
      targetLinkProblem (lib.elemAt parts 1)
    else if !(cfg.schemes ? ${scheme}) then
      "unknown scheme '${scheme}' (known: ${lib.concatStringsSep ", " (lib.attrNames cfg.schemes ++ [ "target" ])}; a plugin's scheme goes in services.credbridge.schemes)"
    else
      null;

  targetLinkProblem =
    path:
    let
      parts = builtins.match "(.+)/([^/]+)" path;
      target = lib.elemAt parts 0;
      cred = lib.elemAt parts 1;
      targets = cfg.settings.targets or { };
    in
    if parts == null then
      "a target: reference is target:TARGET/CREDENTIAL"
    else if !(targets ? ${target}) || !((targets.${target}.credentials or { }) ? ${cred}) then
      "names no credential of this configuration (${target}/${cred})"
    else
      null;

  nameProblem =
    cname:
    if builtins.match credentialNameRegex cname == null || cname == "." || cname == ".." then
      "invalid credential name (1-255 of A-Z a-z 0-9 '_.@-'; systemd's rules)"
    else
      null;

  # Does any module other than this one define systemd.services.<name> (or its template)?
  definedElsewhere =
    name:
    let
      template = builtins.match "([^@]+@)[^@]+" name;
      names = [ name ] ++ lib.optional (template != null) (lib.head template);
      others = lib.filter (d: d.file != thisFile) options.systemd.services.definitionsWithLocations;
    in
    lib.any (d: lib.any (n: builtins.isAttrs d.value && d.value ? ${n}) names) others
    || lib.any (n: config.systemd.units ? "${n}.service") names;

  inlineSecrets =
    path: value:
    if builtins.isAttrs value then
      lib.concatLists (lib.mapAttrsToList (k: v: inlineSecrets (path ++ [ k ]) v) value)
    else if builtins.isList value then
      lib.concatLists (lib.imap0 (i: v: inlineSecrets (path ++ [ (toString i) ]) v) value)
    else if builtins.isString value && lib.elem (lib.last path) inlineSecretKeys then
      [ (lib.concatStringsSep "." path) ]
    else
      [ ];

  hasMicrovmHost = options ? microvm && options.microvm ? vms;
  # microvm.vms.<name> declared by another module (this one only adds extraModules to it).
  declaredVm =
    name:
    hasMicrovmHost
    && lib.any (d: d.file != thisFile && builtins.isAttrs d.value && d.value ? ${name}) options.microvm.vms.definitionsWithLocations;
  networked = lib.any (
    x: (cfg.schemes.${schemeOf x.c.ref} or { networked = false; }).networked
  ) allCredentials;
  anyEncrypted = lib.any (u: u.encrypted) (lib.attrValues cfg.units);
  # `credbridge deliver` with no unit target is an error: no deliver unit then.
  hasUnitTargets = lib.any (t: (t.kind or "unit") == "unit") (
    lib.attrValues (cfg.settings.targets or { })
  );

  # What the deliver and agent units share: they write the same credstore and store.
  deliveryHardening = {
    UMask = "0077";
    StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDirectory;
    StateDirectoryMode = "0700";
    ProtectSystem = "strict";
    ReadWritePaths = [
      cfg.credstoreDirectory
      cfg.stateDirectory
    ]
    ++ lib.optionals anyEncrypted [
      cfg.encryptedDirectory
      "/var/lib/systemd"
    ];
    ProtectHome = "read-only";
    PrivateTmp = true;
    NoNewPrivileges = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectControlGroups = true;
    RestrictRealtime = true;
    SystemCallArchitectures = "native";
  };

  wrapper = pkgs.callPackage ./cloud-hypervisor-wrapper.nix {
    credbridge = cfg.package;
    cloud-hypervisor = cfg.cloudHypervisorPackage;
  };

  guestModule =
    name:
    { config, ... }:
    {
      microvm.cloud-hypervisor.package = wrapper;
      assertions = [
        {
          assertion = config.microvm.hypervisor == "cloud-hypervisor";
          message = "services.credbridge.vms.${name}: the VM's microvm.hypervisor is ${config.microvm.hypervisor}; credbridge's wrapper serves cloud-hypervisor only";
        }
      ];
    };

  assertionsFor = lib.concatLists [
    (map (x: {
      assertion = nameProblem x.cname == null;
      message = "${x.where}: ${toString (nameProblem x.cname)}";
    }) allCredentials)
    (map (x: {
      assertion = referenceProblem x.c.ref == null;
      message = "${x.where}: reference '${x.c.ref}' ${toString (referenceProblem x.c.ref)}";
    }) allCredentials)
    (map (x: {
      assertion = x.c.mode == null || builtins.match "0?[0145][0145]0" x.c.mode != null;
      message = "${x.where}.mode: ${toString x.c.mode} is not allowed (read bits for owner and group only, e.g. 0400 or 0440)";
    }) allCredentials)
    (lib.mapAttrsToList (unit: _: {
      assertion = lib.hasSuffix ".service" unit && builtins.match unitNameRegex unit != null;
      message = "services.credbridge.units.\"${unit}\": a service unit name (NAME.service) is needed; LoadCredential= works in services";
    }) cfg.units)
    (lib.mapAttrsToList (unit: _: {
      assertion = !(lib.hasSuffix ".service" unit) || definedElsewhere (serviceName unit);
      message = "services.credbridge.units.\"${unit}\": no such unit in this configuration (systemd.services.\"${serviceName unit}\" is not defined by any other module)";
    }) cfg.units)
    (lib.mapAttrsToList (name: vm: {
      assertion = !(cfg.units ? ${vm.unit});
      message = "services.credbridge.vms.${name}: its unit ${vm.unit} is also in services.credbridge.units; give the credentials in one place";
    }) cfg.vms)
    (lib.mapAttrsToList (name: vm: {
      assertion = lib.all (c: !c.optional) (lib.attrValues vm.credentials);
      message = "services.credbridge.vms.${name}: optional VM credentials are not supported (an empty value cannot be an OEM string)";
    }) cfg.vms)
    (lib.mapAttrsToList (name: _: {
      assertion = hasMicrovmHost;
      message = "services.credbridge.vms.${name}: needs microvm.nix's host module (microvm.nixosModules.host)";
    }) cfg.vms)
    (lib.mapAttrsToList (name: vm: {
      assertion = !vm.wrapRunner || !hasMicrovmHost || declaredVm name;
      message = "services.credbridge.vms.${name}: no such MicroVM (microvm.vms.${name} is not declared); for a VM managed with the microvm command set wrapRunner = false";
    }) cfg.vms)
    (lib.mapAttrsToList (name: vm: {
      assertion =
        !vm.wrapRunner
        || !hasMicrovmHost
        || !(declaredVm name)
        || config.microvm.vms.${name}.config != null;
      message = "services.credbridge.vms.${name}: microvm.vms.${name} has no `config` (a flake VM), so its runner cannot be changed from here: set wrapRunner = false and microvm.cloud-hypervisor.package = pkgs.credbridge-cloud-hypervisor in the VM's configuration";
    }) cfg.vms)
    (map (path: {
      assertion = false;
      message = "services.credbridge.settings.${path}: an inline secret would be copied into the world-readable Nix store; use the *_file or *_ref setting (a reference) instead";
    }) (inlineSecrets [ ] cfg.settings))
  ];
in
{
  options.services.credbridge = {
    enable = lib.mkEnableOption "credbridge, which delivers credentials to systemd units and microVMs";

    package = mkOption {
      type = types.package;
      default = pkgs.credbridge or (pkgs.python3Packages.callPackage ./package.nix { });
      defaultText = literalExpression "pkgs.credbridge (from the flake's overlay), else built from this source tree";
      description = "The credbridge package.";
    };

    settings = mkOption {
      type = types.attrsOf jsonValue;
      default = { };
      example = literalExpression ''
        {
          sources.vault = { address = "https://vault.example:8200"; auth.token_file = "/run/keys/vault-token"; };
          targets."worker.service".credentials.db-password = "target:app.service/db-password";
        }
      '';
      description = ''
        The credbridge configuration (docs/configuration.md), written with `builtins.toJSON` to
        `${configPath}`. The typed options below add their targets here. Everything in it
        ends up in the world-readable Nix store: references only, never a value or a token
        (settings named like `token` or `password` are refused).
      '';
    };

    schemes = mkOption {
      type = types.attrsOf (
        types.submodule {
          options.networked = mkOption {
            type = types.bool;
            default = false;
            description = "Whether reading this scheme needs the network (orders the deliver unit after network-online.target).";
          };
        }
      );
      default = { };
      example = literalExpression ''{ myvault.networked = true; }'';
      description = ''
        Reference schemes the configuration may use: the built-in sources' schemes are always
        here; add those of third-party plugins installed into `package`. A reference whose
        scheme is not listed is an evaluation error.
      '';
    };

    agent = {
      enable = lib.mkEnableOption "`credbridge-agent.service`: after the boot delivery, `credbridge agent` keeps every unit target fresh (renews leases, re-reads sources every `refresh`, delivers what changed and restarts the units whose credentials changed; docs/agent.md). A new configuration reloads it (SIGHUP) on `nixos-rebuild switch`";

      watchdogSec = mkOption {
        type = types.str;
        default = "10min";
        description = "`WatchdogSec=` of the agent: keep it above the longest delivery (it pings between deliveries).";
      };
    };

    stateDirectory = mkOption {
      type = types.str;
      default = "/var/lib/credbridge";
      description = "Where generated values persist (the store; 0700 directories, 0400 files).";
    };

    credstoreDirectory = mkOption {
      type = types.str;
      default = "/run/credstore";
      description = "Where delivered credentials are written for `LoadCredential=` (tmpfs).";
    };

    encryptedDirectory = mkOption {
      type = types.str;
      default = "/etc/credstore.encrypted";
      description = "Where encrypted credentials are written for `LoadCredentialEncrypted=`.";
    };

    units = mkOption {
      type = types.attrsOf (types.submodule unitModule);
      default = { };
      example = literalExpression ''
        { "app.service".credentials.db-password = "vault:secret/app#password"; }
      '';
      description = ''
        systemd services and the credentials they load. Each unit gets `LoadCredential=` lines
        and is ordered after `credbridge-deliver.service`.
      '';
    };

    vms = mkOption {
      type = types.attrsOf (types.submodule vmModule);
      default = { };
      example = literalExpression ''
        { test-vm.credentials.API_KEY = "generate:base64?bytes=32"; }
      '';
      description = ''
        microvm.nix VMs (cloud-hypervisor) and the credentials their guests get. The VM's unit
        (`microvm@NAME.service`) loads them with `LoadCredential=`; the runner's cloud-hypervisor
        is credbridge's wrapper, which hands them to the guest through the API socket.
      '';
    };

    cloudHypervisorPackage = mkOption {
      type = types.package;
      default = pkgs.cloud-hypervisor;
      defaultText = literalExpression "pkgs.cloud-hypervisor";
      description = "The real cloud-hypervisor the wrapper starts.";
    };

    virtiofsdPackage = mkOption {
      type = types.package;
      default = pkgs.virtiofsd;
      defaultText = literalExpression "pkgs.virtiofsd";
      description = "virtiofsd for VMs whose credentials use the virtiofs sink.";
    };

    cloudHypervisorWrapper = mkOption {
      type = types.package;
      readOnly = true;
      default = wrapper;
      defaultText = literalExpression "a package with bin/cloud-hypervisor running credbridge-cloud-hypervisor";
      description = "The wrapper package the VMs' `microvm.cloud-hypervisor.package` is set to.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      services.credbridge.schemes = lib.mapAttrs (_: s: lib.mapAttrs (_: mkDefault) s) builtinSchemes;
      services.credbridge.settings = {
        store.path = mkDefault cfg.stateDirectory;
        sinks.credstore.directory = mkDefault cfg.credstoreDirectory;
        targets = generatedTargets;
      };

      assertions = assertionsFor;

      environment.etc."credbridge/config.json".text = builtins.toJSON cfg.settings;
      environment.systemPackages = [ cfg.package ];

      systemd.tmpfiles.rules = [
        "d ${cfg.credstoreDirectory} 0700 root root -"
      ]
      ++ lib.optional anyEncrypted "d ${cfg.encryptedDirectory} 0700 root root -";

      systemd.services = mkMerge [
        {
          credbridge-deliver = mkIf hasUnitTargets {
            description = "Deliver credentials with credbridge";
            wantedBy = [ "multi-user.target" ];
            before = consumerUnits;
            after = [ "systemd-tmpfiles-setup.service" ] ++ lib.optional networked "network-online.target";
            wants = lib.optional networked "network-online.target";
            # A new config re-runs delivery on `nixos-rebuild switch`; changed values then
            # reach the units through their on_change.
            restartTriggers = [ (builtins.hashString "sha256" (builtins.toJSON cfg.settings)) ];
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              ExecStart = "${lib.getExe cfg.package} -c ${configPath} deliver";
            }
            // deliveryHardening;
          };
          credbridge-agent = mkIf (hasUnitTargets && cfg.agent.enable) {
            description = "Keep credentials fresh with credbridge";
            wantedBy = [ "multi-user.target" ];
            after = [ "credbridge-deliver.service" ] ++ lib.optional networked "network-online.target";
            wants = [ "credbridge-deliver.service" ] ++ lib.optional networked "network-online.target";
            reloadTriggers = [ (builtins.hashString "sha256" (builtins.toJSON cfg.settings)) ];
            serviceConfig = {
              Type = "notify";
              NotifyAccess = "main";
              ExecStart = "${lib.getExe cfg.package} -c ${configPath} agent";
              ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
              WatchdogSec = cfg.agent.watchdogSec;
              TimeoutStartSec = "10min";
              Restart = "on-failure";
              RestartSec = "5s";
            }
            // deliveryHardening;
          };
        }
        (lib.mapAttrs' (
          unit: u:
          lib.nameValuePair (serviceName unit) {
            wants = [ "credbridge-deliver.service" ];
            after = [ "credbridge-deliver.service" ];
            serviceConfig = credentialSettings unit u;
          }
        ) cfg.units)
        (lib.mapAttrs' (
          name: vm:
          lib.nameValuePair (serviceName vm.unit) {
            # microvm@.service is a template: this instance gets a drop-in, not a new unit.
            overrideStrategy = "asDropin";
            wants = [ "credbridge-deliver.service" ];
            after = [ "credbridge-deliver.service" ];
            environment = {
              CREDBRIDGE_VM = name;
              CREDBRIDGE_CONFIG = configPath;
            };
            serviceConfig = credentialSettings vm.unit (vm // { encrypted = false; }) // {
              # A private tmpfs directory for the wrapper's lock and (without microvm.socket)
              # the API socket; removed when the unit stops.
              RuntimeDirectory = "credbridge-microvm-${name}";
              RuntimeDirectoryMode = "0700";
            };
          }
        ) cfg.vms)
      ];
    }
    (lib.optionalAttrs hasMicrovmHost {
      # mkIf per VM (not filterAttrs): the attribute set's shape must not depend on
      # microvm.vms' own definitions, which declaredVm reads.
      microvm.vms = lib.mapAttrs (
        name: vm: mkIf (vm.wrapRunner && declaredVm name) { extraModules = [ (guestModule name) ]; }
      ) cfg.vms;
    })
  ]);
}
