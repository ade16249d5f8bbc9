# `nix develop`: the pinned toolchain (added by craneLib.devShell) and the
# tools of every check of nix/checks.toml.
{
  pkgs,
  build,
  checks,
}:
let
  inherit (pkgs) lib;
  inherit (build) declared;
in
build.craneLib.devShell {
  # Inputs of the cargo checks only; the image builders' inputs are not useful
  # interactively.
  checks = lib.filterAttrs (
    name: _: lib.hasPrefix "cargo-" (declared.checks.${name}.nix or "")
  ) checks;

  packages = declared.allTools;
}
