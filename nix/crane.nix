# The Rust toolchain, the filtered source and the one dependency build that
# every package and check shares (crane's quick-start-workspace layout).
{ pkgs, crane }:
let
  inherit (pkgs) lib;

  # rust-toolchain.toml is the one source of the Rust version.
  craneLib = (crane.mkLib pkgs).overrideToolchain (
    p: p.rust-bin.fromRustupToolchainFile ../rust-toolchain.toml
  );

  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
  inherit (cargoToml.workspace.package) version;

  # nix/checks.toml, the one declaration of the checks and their filesets.
  declared = import ./declared.nix { inherit lib pkgs; };

  # The allow-list of what cargo reads (the `cargo` fileset of checks.toml):
  # editing the README, config/, compose files or CI rebuilds nothing.
  src = declared.fileset "cargo";

  commonArgs = {
    inherit src version;
    pname = "madbase";
    strictDeps = true;

    # The whole workspace: default-members is only crates/madbase, and the
    # checks must cover every crate (xtask and testkit included).
    cargoExtraArgs = "--locked --workspace";

    # Queries are checked against the committed .sqlx data, never a database.
    SQLX_OFFLINE = "true";
  };

  # Built once, shared by the package and every cargo check.
  cargoArtifacts = craneLib.buildDepsOnly commonArgs;
in
{
  inherit
    craneLib
    declared
    src
    version
    commonArgs
    cargoArtifacts
    ;
}
