# `nix develop`: the pinned toolchain (added by craneLib.devShell) and every
# tool the checks, the compose stack and the linters use.
{
  pkgs,
  build,
  checks,
}:
build.craneLib.devShell {
  # Inputs of the cargo checks only; the image builders' inputs are not useful
  # interactively.
  checks = pkgs.lib.filterAttrs (name: _: pkgs.lib.hasPrefix "madbase-" name) checks;

  packages = [
    pkgs.sqlx-cli
    pkgs.cargo-nextest
    pkgs.postgresql
    pkgs.podman
    pkgs.podman-compose
    # promtool
    (pkgs.lib.getOutput "cli" pkgs.prometheus)
    pkgs.victoriametrics
    pkgs.nixfmt
    pkgs.deadnix
  ];
}
