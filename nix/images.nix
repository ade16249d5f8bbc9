# The service images, generated from nix/images.toml: the one description the
# non-Nix builder (`cargo xtask images`) reads too, so the two cannot drift.
{
  pkgs,
  madbase,
  version,
  revision,
  lastModifiedDate,
}:
let
  inherit (pkgs) lib;

  spec = builtins.fromTOML (builtins.readFile ./images.toml);

  # The image creation time is the flake's last modification, so the same
  # inputs give the same digest. lastModifiedDate is "YYYYMMDDHHMMSS".
  created =
    let
      part = start: length: builtins.substring start length lastModifiedDate;
    in
    "${part 0 4}-${part 4 2}-${part 6 2}T${part 8 2}:${part 10 2}:${part 12 2}Z";

  # Docker image configs express durations in nanoseconds.
  nanoseconds = seconds: seconds * 1000000000;

  uid = toString spec.uid;
  gid = toString spec.gid;

  # Name resolution for the numeric user; no shell, so no login.
  passwd = pkgs.writeTextDir "etc/passwd" ''
    root:x:0:0:root:/nonexistent:/sbin/nologin
    ${spec.user_name}:x:${uid}:${gid}:${spec.user_name}:/nonexistent:/sbin/nologin
  '';
  group = pkgs.writeTextDir "etc/group" ''
    root:x:0:
    ${spec.user_name}:x:${gid}:
  '';
  nsswitch = pkgs.writeTextDir "etc/nsswitch.conf" ''
    hosts: files dns
  '';

  # cacert ships etc/ssl/certs/ca-bundle.crt; SSL_CERT_FILE names the
  # conventional ca-certificates.crt.
  caCertificates = pkgs.runCommand "ca-certificates" { } ''
    mkdir -p $out/etc/ssl/certs
    ln -s ${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt $out/etc/ssl/certs/ca-certificates.crt
  '';

  mkImage =
    service: svc:
    let
      apiPort = toString svc.api_port;
      adminPort = toString svc.admin_port;
      env = spec.env // {
        MADBASE_SERVICE = service;
        MADBASE_LISTEN = "0.0.0.0:${apiPort}";
        MADBASE_ADMIN_LISTEN = "0.0.0.0:${adminPort}";
      };
    in
    pkgs.dockerTools.buildLayeredImage {
      name = "${spec.registry}/${service}";
      tag = version;
      inherit created;

      # The same madbase store path in every image, hence the same layer.
      contents = [
        madbase
        pkgs.cacert
        caCertificates
        passwd
        group
        nsswitch
      ];

      # A writable /tmp for the non-root user.
      extraCommands = ''
        mkdir -m 1777 tmp
      '';

      config = {
        Entrypoint = [
          "/bin/${spec.binary}"
          service
        ];
        User = "${uid}:${gid}";
        ExposedPorts = {
          "${apiPort}/tcp" = { };
          "${adminPort}/tcp" = { };
        };
        Env = lib.mapAttrsToList (name: value: "${name}=${toString value}") env;
        Healthcheck = {
          Test = [
            "CMD"
            "/bin/${spec.binary}"
          ]
          ++ spec.healthcheck.args;
          Interval = nanoseconds spec.healthcheck.interval_seconds;
          Timeout = nanoseconds spec.healthcheck.timeout_seconds;
          StartPeriod = nanoseconds spec.healthcheck.start_period_seconds;
          Retries = spec.healthcheck.retries;
        };
        Labels = {
          "org.opencontainers.image.source" = spec.source;
          "org.opencontainers.image.revision" = revision;
          "org.opencontainers.image.version" = version;
          "org.opencontainers.image.title" = svc.title;
          "org.opencontainers.image.description" = svc.description;
          "org.opencontainers.image.vendor" = spec.vendor;
          "org.opencontainers.image.licenses" = spec.licenses;
        };
      };
    };
in
lib.mapAttrs' (
  service: svc: lib.nameValuePair "${service}-image" (mkImage service svc)
) spec.services
