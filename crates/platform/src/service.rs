//! The identity of a madbase service: its name and default ports.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// One of the four madbase services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The public edge.
    Proxy,
    /// The control plane.
    Control,
    /// The data API.
    Worker,
    /// The JavaScript functions runtime.
    Functions,
}

impl Service {
    /// All services, in start order (control first: the others look tenants up there).
    pub const ALL: [Service; 4] = [
        Service::Control,
        Service::Worker,
        Service::Functions,
        Service::Proxy,
    ];

    /// The service's name as used in subcommands, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Service::Proxy => "proxy",
            Service::Control => "control",
            Service::Worker => "worker",
            Service::Functions => "functions",
        }
    }

    /// Default API port (8000..8003).
    pub fn default_api_port(self) -> u16 {
        match self {
            Service::Proxy => 8000,
            Service::Control => 8001,
            Service::Worker => 8002,
            Service::Functions => 8003,
        }
    }

    /// Default admin port (9000..9003): health, readiness and metrics.
    pub fn default_admin_port(self) -> u16 {
        self.default_api_port() + 1000
    }

    /// Default API listen address (all interfaces, as containers need).
    pub fn default_listen(self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.default_api_port()))
    }

    /// Default admin listen address.
    pub fn default_admin_listen(self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.default_admin_port()))
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.name() == s)
            .ok_or_else(|| {
                format!("unknown service {s:?} (expected proxy, control, worker or functions)")
            })
    }
}
