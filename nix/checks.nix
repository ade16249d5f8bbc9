# `nix flake check`: every check of nix/checks.toml that has a `nix` builder,
# each from its declared fileset with its declared tools, all reusing the one
# dependency build.
{
  pkgs,
  build,
  packages,
  images,
}:
let
  inherit (pkgs) lib;
  inherit (build)
    craneLib
    declared
    version
    commonArgs
    cargoArtifacts
    ;

  # A throwaway Postgres listening only on a unix socket in the build
  # directory, the way crane's end-to-end-testing example runs one. The test
  # kit creates one database per test on the server DATABASE_URL names.
  startPostgres = ''
    export PGDATA="$NIX_BUILD_TOP/postgres"
    initdb --username=postgres --auth=trust --encoding=UTF8 --no-locale "$PGDATA" >/dev/null
    pg_ctl --pgdata="$PGDATA" --log="$NIX_BUILD_TOP/postgres.log" --wait \
      --options="-c listen_addresses= -c unix_socket_directories=$PGDATA -c max_connections=200 -c fsync=off" \
      start
    export DATABASE_URL="postgres://postgres@localhost/postgres?host=$PGDATA"
  '';
  stopPostgres = ''
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
  '';
  withPostgres =
    check: script:
    if declared.needsPostgres check then startPostgres + script + stopPostgres else script;

  # The arguments every cargo check shares: its own fileset and tools.
  cargoArgs =
    check:
    commonArgs
    // {
      inherit cargoArtifacts;
      src = declared.fileset check.fileset;
      nativeBuildInputs = declared.tools check;
    };

  # A shell script over a check's fileset, with its tools on PATH.
  script =
    check: text:
    pkgs.runCommand check.name
      {
        src = declared.fileset check.fileset;
        nativeBuildInputs = declared.tools check;
      }
      ''
        cd "$src"
        ${text}
        touch $out
      '';

  # One builder per `nix` value of nix/checks.toml.
  builders = {
    package = _: packages.madbase;

    cargo-fmt =
      check:
      craneLib.cargoFmt {
        inherit version;
        src = declared.fileset check.fileset;
        pname = "madbase";
        cargoExtraArgs = "--all";
      };

    cargo-clippy =
      check:
      craneLib.cargoClippy (
        cargoArgs check
        // {
          cargoClippyExtraArgs = "--all-targets -- -D warnings";
        }
      );

    # Licences, bans (duplicate versions) and sources of the dependency
    # graph, as deny.toml allows them (crane runs `cargo --offline deny
    # check bans licenses sources` by default; advisories need the network).
    cargo-deny =
      check:
      craneLib.cargoDeny {
        inherit version;
        src = declared.fileset check.fileset;
        pname = "madbase";
        nativeBuildInputs = declared.tools check;
      };

    cargo-nextest =
      check:
      craneLib.cargoNextest (
        cargoArgs check
        // {
          # The postgrest-js compatibility test needs `npm ci`, and the sandbox
          # has no network: it runs in `cargo xtask ci` instead.
          MADBASE_SKIP_JS_COMPAT = "1";
          preCheck = lib.optionalString (declared.needsPostgres check) startPostgres;
          postCheck = lib.optionalString (declared.needsPostgres check) stopPostgres;
        }
      );

    # The committed .sqlx data matches the queries, checked against a
    # database with every crate's migrations applied.
    sqlx-check =
      check:
      craneLib.mkCargoDerivation (
        cargoArgs check
        // {
          pnameSuffix = "-sqlx-check";
          doInstallCargoArtifacts = false;
          buildPhaseCargoCommand = withPostgres check ''
            for migrations in crates/*/migrations; do
              if [ -d "$migrations" ]; then
                sqlx migrate run --source "$migrations" --ignore-missing
              fi
            done
            # prepare runs `cargo check` with SQLX_OFFLINE=false against DATABASE_URL.
            cargo sqlx prepare --workspace --check -- --all-targets --profile release
          '';
        }
      );

    # A shell command over the check's fileset (`command` in checks.toml).
    script = check: script check check.command;
  };

  # The image derivations are checks too, under their own names.
  declaredBuilders = lib.unique (map (check: check.nix) (lib.attrValues declared.nixChecks));
  unknown = lib.filter (name: name != "images" && !(builders ? ${name})) declaredBuilders;
  unused = lib.filter (name: !(builtins.elem name declaredBuilders)) (lib.attrNames builders);
in
assert lib.assertMsg (unknown == [ ]) "nix/checks.toml names unknown builders: ${toString unknown}";
assert lib.assertMsg (
  unused == [ ]
) "builders no check of nix/checks.toml uses: ${toString unused}";
lib.mapAttrs (_: check: builders.${check.nix} check) (
  lib.filterAttrs (_: check: check.nix != "images") declared.nixChecks
)
// lib.optionalAttrs (lib.any (check: check.nix == "images") (
  lib.attrValues declared.nixChecks
)) images
