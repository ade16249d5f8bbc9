# nix/checks.toml, the one declaration of the checks, as Nix values: the
# checks by name, the filesets they read and the packages of their tools.
# nix/checks.nix, nix/crane.nix and nix/devshell.nix take everything from
# here; `cargo xtask lint-nix` evaluates them against stand-ins of nixpkgs
# and crane and compares the result with what `cargo xtask ci` runs.
{ lib, pkgs }:
let
  declaration = builtins.fromTOML (builtins.readFile ./checks.toml);

  root = ../.;
  path = relative: root + "/${relative}";

  # A tree is a directory, whole or only the files with the given extensions.
  tree =
    spec:
    if spec ? ext then
      lib.fileset.fileFilter (file: lib.any file.hasExt spec.ext) (path spec.dir)
    else
      path spec.dir;

  # `name` of [filesets] as a source directory in the store.
  fileset =
    name:
    let
      spec = declaration.filesets.${name};
    in
    lib.fileset.toSource {
      inherit root;
      fileset = lib.fileset.unions (
        map path (spec.files or [ ])
        ++ map tree (spec.trees or [ ])
        ++ map (relative: lib.fileset.maybeMissing (path relative)) (spec.optional or [ ])
      );
    };

  # A nixpkgs attribute path, with `^output` for another output than the
  # default one (the installable syntax: "prometheus^cli").
  package =
    spec:
    let
      parts = lib.splitString "^" spec;
      drv = lib.getAttrFromPath (lib.splitString "." (builtins.head parts)) pkgs;
    in
    if builtins.length parts == 2 then lib.getOutput (builtins.elemAt parts 1) drv else drv;

  checks = builtins.listToAttrs (map (check: lib.nameValuePair check.name check) declaration.check);
in
{
  inherit checks fileset;

  # The checks `nix flake check` builds.
  nixChecks = lib.filterAttrs (_: check: check ? nix) checks;

  # The packages on PATH of one check.
  tools = check: map package check.tools;

  # Every check's tools: `nix develop`'s package list.
  allTools = map package (lib.unique (lib.concatMap (check: check.tools) declaration.check));

  needsPostgres = check: builtins.elem "postgres" (check.needs or [ ]);
}
