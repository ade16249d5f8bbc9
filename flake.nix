{
  description = "madbase: a multi-tenant Postgres backend platform";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

    crane.url = "github:ipetkov/crane/v0.24.0";

    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
      rust-overlay,
    }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      # Only the final binary and the image labels see the revision, so a new
      # commit never invalidates the dependency build or the checks.
      revision = self.rev or self.dirtyRev or "dirty";

      # Everything one system needs, evaluated once and shared by every output.
      perSystem = lib.genAttrs systems (
        system:
        let
          pkgs = import nixpkgs {
            inherit system;
            overlays = [ rust-overlay.overlays.default ];
          };
          build = import ./nix/crane.nix { inherit pkgs crane; };
          packages = import ./nix/packages.nix { inherit build revision; };
          images = import ./nix/images.nix {
            inherit pkgs revision;
            inherit (build) version;
            inherit (packages) madbase;
            lastModifiedDate = self.lastModifiedDate or "19700101000001";
          };
        in
        {
          inherit
            pkgs
            build
            packages
            images
            ;
        }
      );

      forAllSystems = f: lib.mapAttrs f perSystem;
    in
    {
      packages = forAllSystems (_system: s: s.packages // s.images // { default = s.packages.madbase; });

      checks = forAllSystems (
        _system: s:
        import ./nix/checks.nix {
          inherit (s)
            pkgs
            build
            packages
            images
            ;
        }
      );

      devShells = forAllSystems (
        system: s: {
          default = import ./nix/devshell.nix {
            inherit (s) pkgs build;
            checks = self.checks.${system};
          };
        }
      );

      apps = forAllSystems (
        _system: s:
        import ./nix/apps.nix {
          inherit (s) pkgs images;
          inherit (s.packages) madbase;
        }
      );

      formatter = forAllSystems (_system: s: s.pkgs.nixfmt-tree);
    };
}
