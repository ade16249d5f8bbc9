# The madbase binary, from which every image and app is built.
{ build, revision }:
let
  inherit (build) craneLib commonArgs cargoArtifacts;
in
{
  madbase = craneLib.buildPackage (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoExtraArgs = "--locked -p madbase";

      # The tests run once, in the madbase-nextest check.
      doCheck = false;

      # Set here only, never on buildDepsOnly: a new commit rebuilds the
      # binary, not its dependencies.
      MADBASE_REVISION = revision;

      meta.mainProgram = "madbase";
    }
  );
}
