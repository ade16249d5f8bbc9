# Evaluates nix/checks.nix, nix/crane.nix, nix/packages.nix and
# nix/devshell.nix with Nix's builtins only (Nix 2.8 cannot fetch nixpkgs or
# crane here): stand-ins of nixpkgs' lib, of the packages named in
# nix/checks.toml and of crane's builders record what each check would be
# built from. `cargo xtask lint-nix` compares the result with nix/checks.toml
# and with what `cargo xtask ci` and `cargo xtask sandbox` do.
#
# The lib.fileset stand-in follows the real one on the points the flake
# relies on: a flake's source holds only files git tracks, a path that is
# not there is an error unless wrapped in maybeMissing, a directory stands
# for every file below it, and fileFilter sees each file's name.
{
  # The workspace root.
  root,
  # A JSON file listing the files git tracks, relative to the root.
  trackedFile,
  # A JSON file with the service names of nix/images.toml.
  servicesFile,
}:
let
  tracked = builtins.fromJSON (builtins.readFile trackedFile);
  services = builtins.fromJSON (builtins.readFile servicesFile);

  rootString = toString root;
  relative =
    path:
    let
      text = toString path;
    in
    if text == rootString then
      ""
    else if lib.hasPrefix "${rootString}/" text then
      builtins.substring (builtins.stringLength rootString + 1) (builtins.stringLength text) text
    else
      throw "fileset: ${text} is outside the flake";
  under =
    dir: builtins.filter (file: dir == "" || file == dir || lib.hasPrefix "${dir}/" file) tracked;
  filesOf =
    value:
    if builtins.isList value then
      value
    else
      let
        rel = relative value;
        files = under rel;
      in
      if files == [ ] then
        throw "fileset: ${rel} does not exist in the flake's source (not tracked by git)"
      else
        files;

  lib = rec {
    hasPrefix = prefix: text: builtins.substring 0 (builtins.stringLength prefix) text == prefix;
    hasSuffix =
      suffix: text:
      let
        n = builtins.stringLength text;
        m = builtins.stringLength suffix;
      in
      n >= m && builtins.substring (n - m) m text == suffix;
    hasInfix = infix: text: builtins.match ".*${escape infix}.*" text != null;
    escape =
      text:
      builtins.replaceStrings
        [
          "\\"
          "."
          "^"
          "$"
          "*"
          "+"
          "?"
          "("
          ")"
          "["
          "]"
          "{"
          "}"
          "|"
        ]
        [
          "\\\\"
          "\\."
          "\\^"
          "\\$"
          "\\*"
          "\\+"
          "\\?"
          "\\("
          "\\)"
          "\\["
          "\\]"
          "\\{"
          "\\}"
          "\\|"
        ]
        text;
    splitString =
      separator: text: builtins.filter builtins.isString (builtins.split (escape separator) text);
    last = list: builtins.elemAt list (builtins.length list - 1);
    inherit (builtins)
      any
      all
      filter
      concatMap
      mapAttrs
      attrValues
      attrNames
      ;
    unique = builtins.foldl' (seen: x: if builtins.elem x seen then seen else seen ++ [ x ]) [ ];
    nameValuePair = name: value: { inherit name value; };
    filterAttrs =
      predicate: set:
      builtins.listToAttrs (
        builtins.concatMap (
          name:
          if predicate name set.${name} then
            [
              {
                inherit name;
                value = set.${name};
              }
            ]
          else
            [ ]
        ) (builtins.attrNames set)
      );
    optionalAttrs = condition: set: if condition then set else { };
    optionalString = condition: text: if condition then text else "";
    assertMsg = condition: message: if condition then true else throw message;
    getAttrFromPath = path: set: builtins.foldl' (s: name: s.${name}) set path;
    getOutput = output: drv: drv // { name = "${drv.name}^${output}"; };
    fileset = {
      unions = list: unique (builtins.concatMap filesOf list);
      fileFilter =
        predicate: dir:
        builtins.filter (
          file:
          predicate {
            name = last (splitString "/" file);
            hasExt = ext: hasSuffix ".${ext}" file;
            type = "regular";
          }
        ) (filesOf dir);
      maybeMissing = path: if under (relative path) == [ ] then [ ] else filesOf path;
      toSource =
        { root, fileset }:
        assert relative root == "";
        {
          outPath = "/nix/store/stub-source";
          files = builtins.sort builtins.lessThan (filesOf fileset);
        };
    };
  };

  declaration = builtins.fromTOML (builtins.readFile (root + "/nix/checks.toml"));

  # Every package nix/checks.toml names, and nothing else: a Nix file using
  # another one fails to evaluate.
  drv = name: {
    inherit name;
    outPath = "/nix/store/stub-${name}";
  };
  setPath =
    path: value:
    if path == [ ] then value else { ${builtins.head path} = setPath (builtins.tail path) value; };
  merge =
    a: b:
    a
    // builtins.mapAttrs (
      name: value: if a ? ${name} && builtins.isAttrs value then merge a.${name} value else value
    ) b;
  toolAttrs = lib.unique (
    map (spec: builtins.head (lib.splitString "^" spec)) (
      builtins.concatMap (check: check.tools) declaration.check
    )
  );
  pkgs =
    builtins.foldl' (acc: attr: merge acc (setPath (lib.splitString "." attr) (drv attr))) { } toolAttrs
    // {
      inherit lib;
      runCommand = name: env: text: {
        stub = {
          builder = "runCommand";
          inherit name text;
          src = env.src.files or [ ];
          tools = map (p: p.name) (env.nativeBuildInputs or [ ]);
          postgres = false;
        };
      };
    };

  cargoBuilder = builder: args: {
    stub = {
      inherit builder;
      src = args.src.files;
      tools = map (p: p.name) (args.nativeBuildInputs or [ ]);
      postgres = lib.hasInfix "initdb" (
        (args.preCheck or "") + (args.buildPhaseCargoCommand or "") + (args.buildPhase or "")
      );
    };
  };
  craneLib = {
    cargoFmt = cargoBuilder "cargoFmt";
    cargoClippy = cargoBuilder "cargoClippy";
    cargoNextest = cargoBuilder "cargoNextest";
    cargoDeny = cargoBuilder "cargoDeny";
    mkCargoDerivation = cargoBuilder "mkCargoDerivation";
    buildPackage = cargoBuilder "buildPackage";
    buildDepsOnly = cargoBuilder "buildDepsOnly";
    devShell = args: {
      stub = {
        packages = map (p: p.name) args.packages;
        checks = builtins.attrNames args.checks;
      };
    };
  };
  crane.mkLib = _pkgs: { overrideToolchain = _toolchain: craneLib; };

  build = import (root + "/nix/crane.nix") { inherit pkgs crane; };
  packages = import (root + "/nix/packages.nix") {
    inherit build;
    revision = "stub";
  };
  images = builtins.listToAttrs (
    map (service: lib.nameValuePair "${service}-image" { stub.builder = "image"; }) services
  );
  checks = import (root + "/nix/checks.nix") {
    inherit
      pkgs
      build
      packages
      images
      ;
  };
  devShell = import (root + "/nix/devshell.nix") {
    inherit pkgs build checks;
  };
in
{
  checks = builtins.mapAttrs (_: check: check.stub) checks;
  devShell = devShell.stub;
  dependencies = build.cargoArtifacts.stub;
}
