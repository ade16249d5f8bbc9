# `nix run .#dev` and `nix run .#load-images`.
{
  pkgs,
  madbase,
  images,
}:
let
  inherit (pkgs) lib;

  mkApp = description: drv: {
    type = "app";
    program = lib.getExe drv;
    meta = { inherit description; };
  };

  dev = pkgs.writeShellApplication {
    name = "madbase-dev";
    # `madbase dev` starts its own Postgres from these binaries.
    runtimeInputs = [
      madbase
      pkgs.postgresql
    ];
    text = ''
      exec madbase dev "$@"
    '';
  };

  # The host's podman, so the images land in the user's own storage with the
  # host's policy and registries configuration.
  load-images = pkgs.writeShellApplication {
    name = "load-images";
    text = ''
      if ! command -v podman >/dev/null; then
        echo "load-images: podman is not on PATH" >&2
        exit 1
      fi
    ''
    + lib.concatMapStrings (image: ''
      podman load < ${image}
    '') (lib.attrValues images);
  };
in
{
  dev = mkApp "Run the whole madbase stack locally (madbase dev)" dev;
  load-images = mkApp "Load every service image into podman" load-images;
}
