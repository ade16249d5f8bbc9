# `nix flake check`: the package, the images, formatting, clippy, the tests
# and the sqlx offline data, all reusing the one dependency build.
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
    src
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

  # Only the Nix files, for the Nix linters.
  nixSrc = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../flake.nix
      (lib.fileset.fileFilter (file: file.hasExt "nix") ./.)
    ];
  };

  # Only config/, for the alert rule tests.
  configSrc = lib.fileset.toSource {
    root = ../.;
    fileset = ../config;
  };

  promtool = lib.getOutput "cli" pkgs.prometheus;
in
{
  inherit (packages) madbase;

  madbase-fmt = craneLib.cargoFmt {
    inherit src version;
    pname = "madbase";
    cargoExtraArgs = "--all";
  };

  madbase-clippy = craneLib.cargoClippy (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--all-targets -- -D warnings";
    }
  );

  madbase-nextest = craneLib.cargoNextest (
    commonArgs
    // {
      inherit cargoArtifacts;
      # The test kit runs psql; the metrics test pipes /metrics to promtool.
      nativeBuildInputs = [
        pkgs.postgresql
        promtool
      ];
      # The postgrest-js compatibility test needs `npm ci`, and the sandbox
      # has no network: it runs in `cargo xtask ci` instead.
      MADBASE_SKIP_JS_COMPAT = "1";
      preCheck = startPostgres;
      postCheck = stopPostgres;
    }
  );

  # The committed .sqlx data matches the queries, checked against a database
  # with every crate's migrations applied.
  madbase-sqlx-check = craneLib.mkCargoDerivation (
    commonArgs
    // {
      inherit cargoArtifacts;
      pnameSuffix = "-sqlx-check";
      doInstallCargoArtifacts = false;
      nativeBuildInputs = [
        pkgs.postgresql
        pkgs.sqlx-cli
      ];
      buildPhaseCargoCommand = ''
        ${startPostgres}
        for migrations in crates/*/migrations; do
          if [ -d "$migrations" ]; then
            sqlx migrate run --source "$migrations" --ignore-missing
          fi
        done
        # prepare runs `cargo check` with SQLX_OFFLINE=false against DATABASE_URL.
        cargo sqlx prepare --workspace --check -- --all-targets --profile release
        ${stopPostgres}
      '';
    }
  );

  nix-fmt = pkgs.runCommand "nix-fmt" { nativeBuildInputs = [ pkgs.nixfmt ]; } ''
    cd ${nixSrc}
    find . -name '*.nix' -exec nixfmt --check {} +
    touch $out
  '';

  deadnix = pkgs.runCommand "deadnix" { nativeBuildInputs = [ pkgs.deadnix ]; } ''
    deadnix --fail ${nixSrc}
    touch $out
  '';

  alert-rules = pkgs.runCommand "alert-rules" { nativeBuildInputs = [ promtool ]; } ''
    cd ${configSrc}
    promtool test rules config/alerts.test.yml
    touch $out
  '';
}
// images
