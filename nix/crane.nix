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

  # An allow-list of what cargo reads: editing the README, config/, compose
  # files or CI rebuilds nothing.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../.cargo/config.toml
      ../rust-toolchain.toml
      # Every crate's Cargo.toml and .rs files.
      (craneLib.fileset.commonCargoSources ../crates)
      # Migrations (e.g. crates/control/migrations), embedded by `sqlx::migrate!`.
      (lib.fileset.fileFilter (file: file.hasExt "sql") ../crates)
      # Query data for the compile-time checked queries (SQLX_OFFLINE).
      (lib.fileset.maybeMissing ../.sqlx)
      # The image description, which a test checks against the binary.
      ./images.toml
    ];
  };

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
    src
    version
    commonArgs
    cargoArtifacts
    ;
}
