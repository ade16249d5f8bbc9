//! `fetch` from inside a function: performed by the worker on a
//! current-thread tokio runtime with reqwest, behind an SSRF guard.
//!
//! The guard resolves host names itself (a reqwest DNS resolver) and refuses
//! loopback, private, link-local (incl. the 169.254.169.254 metadata
//! address), unspecified, CGNAT, multicast and broadcast addresses unless the
//! host name or a CIDR containing the address is in `Invoke.fetch_allow`.
//! IP-literal URLs (which skip DNS) and redirect targets are checked too; no
//! proxy from the environment is used.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::mpsc;

/// A sub-request, as the prelude describes it.
#[derive(Debug, Clone)]
pub(crate) struct FetchRequest {
    pub method: String,
    pub url: String,
    /// Header values are bytes (the prelude sends them Latin-1).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Option<Vec<u8>>,
    pub follow_redirects: bool,
    pub error_on_redirect: bool,
}

/// A finished sub-request.
#[derive(Debug)]
pub(crate) struct FetchOk {
    pub status: u16,
    pub status_text: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub url: String,
    pub redirected: bool,
}

/// A failed sub-request; `limit` makes it a FetchLimit when uncaught.
#[derive(Debug)]
pub(crate) struct FetchErr {
    pub limit: bool,
    pub message: String,
}

pub(crate) type FetchResult = Result<FetchOk, FetchErr>;

/// Which destinations the guard lets through for one invocation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl Policy {
    /// From `Invoke.fetch_allow`: host names (any case, optional `:port`
    /// ignored), IP addresses (IPv6 with or without brackets), CIDRs, or
    /// URLs (their host).
    pub(crate) fn new(allow: &[String]) -> Self {
        let mut policy = Policy::default();
        for entry in allow {
            let from_url = entry
                .contains("://")
                .then(|| url::Url::parse(entry.trim()).ok())
                .flatten()
                .and_then(|u| u.host_str().map(str::to_owned));
            let entry = from_url.as_deref().unwrap_or(entry).trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                policy.nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                policy.nets.push(IpNet::from(ip));
            } else if let Ok(addr) = entry.parse::<SocketAddr>() {
                policy.nets.push(IpNet::from(addr.ip()));
            } else {
                let unbracketed = entry.trim_start_matches('[');
                let host = unbracketed
                    .rsplit_once(':')
                    .filter(|(h, port)| {
                        // A port follows a name, an IPv4 address or `]`.
                        (!h.contains(':') || h.ends_with(']'))
                            && port.chars().all(|c| c.is_ascii_digit())
                    })
                    .map_or(unbracketed, |(h, _)| h);
                let host = host.trim_end_matches(']').trim_end_matches('.');
                match host.parse::<IpAddr>() {
                    Ok(ip) => policy.nets.push(IpNet::from(ip)),
                    Err(_) => policy.hosts.push(host.to_ascii_lowercase()),
                }
            }
        }
        policy
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Whether the guard lets `ip` through.
    pub(crate) fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL before it is requested: IP literals are checked here,
    /// names when they resolve.
    fn check_url(&self, url: &url::Url) -> Result<(), String> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip), url),
            Some(url::Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip), url),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(format!("fetch: '{url}' has no host")),
        }
    }

    fn check_literal(&self, ip: IpAddr, url: &url::Url) -> Result<(), String> {
        if self.ip_allowed(ip) || url.host_str().is_some_and(|h| self.host_allowed(h)) {
            Ok(())
        } else {
            Err(blocked_message(&ip.to_string(), ip))
        }
    }
}

const BLOCKED_PREFIX: &str = "fetch: the address ";

fn blocked_message(host: &str, ip: IpAddr) -> String {
    format!(
        "{BLOCKED_PREFIX}{ip} of '{host}' is not reachable from functions \
         (loopback, private, link-local or reserved; see fetch_allow)"
    )
}

/// IPv4-mapped IPv6 addresses are checked as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Not loopback, private, link-local, unspecified, CGNAT, multicast,
/// broadcast or otherwise reserved.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        // CGNAT 100.64.0.0/10
        || (o[0] == 100 && (o[1] & 0xC0) == 64)
        // IETF protocol assignments 192.0.0.0/24, benchmarking 198.18.0.0/15
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xFE) == 18)
        // reserved 240.0.0.0/4
        || o[0] >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // unique local fc00::/7
        || (s[0] & 0xFE00) == 0xFC00
        // link-local fe80::/10
        || (s[0] & 0xFFC0) == 0xFE80
        // site-local fec0::/10 (deprecated)
        || (s[0] & 0xFFC0) == 0xFEC0
        // documentation 2001:db8::/32
        || (s[0] == 0x2001 && s[1] == 0x0DB8)
        // NAT64 64:ff9b::/96 can reach anything IPv4: only its public part
        || (s[0] == 0x0064 && s[1] == 0xFF9B && s[2..6] == [0, 0, 0, 0]
            && !is_public_v4(Ipv4Addr::new(
                (s[6] >> 8) as u8,
                (s[6] & 0xFF) as u8,
                (s[7] >> 8) as u8,
                (s[7] & 0xFF) as u8,
            ))))
}

/// The resolver's refusal, recognised in reqwest's error chain.
#[derive(Debug)]
struct Blocked(String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Blocked {}

/// Resolves with the system resolver and drops refused addresses.
#[derive(Debug)]
struct GuardedResolver(Arc<Policy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if policy.host_allowed(&host) {
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let first = addrs.first().map(SocketAddr::ip);
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| policy.ip_allowed(a.ip()))
                .collect();
            match (allowed.is_empty(), first) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
                (true, Some(ip)) => Err(Box::new(Blocked(blocked_message(&host, ip))).into()),
                (true, None) => Err(format!("fetch: '{host}' did not resolve").into()),
            }
        })
    }
}

/// The worker's network side: a tokio runtime and the in-flight fetches.
pub(crate) struct Net {
    rt: Option<tokio::runtime::Runtime>,
    tx: mpsc::UnboundedSender<(u32, FetchResult)>,
    rx: mpsc::UnboundedReceiver<(u32, FetchResult)>,
    tasks: HashMap<u32, tokio::task::JoinHandle<()>>,
    /// Clients of the current invocation (built lazily for its policy).
    clients: Option<(reqwest::Client, reqwest::Client)>,
    /// The current invocation's guard and body limit.
    policy: Arc<Policy>,
    max_bytes: u64,
    /// The `fetch_allow` the guard was made from.
    allow: Option<Vec<String>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("pending", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

/// Reading a sub-request's body is bounded by this wall time too.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_REDIRECTS: usize = 20;

impl Net {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Net {
            rt: None,
            tx,
            rx,
            tasks: HashMap::new(),
            clients: None,
            policy: Arc::new(Policy::default()),
            max_bytes: 0,
            allow: None,
        }
    }

    fn runtime(&mut self) -> Result<&tokio::runtime::Runtime, String> {
        if self.rt.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("fetch: cannot start the network runtime: {e}"))?;
            self.rt = Some(rt);
        }
        self.rt
            .as_ref()
            .ok_or_else(|| "fetch: no network runtime".to_owned())
    }

    fn clients(
        &mut self,
        policy: &Arc<Policy>,
    ) -> Result<(reqwest::Client, reqwest::Client), String> {
        if let Some(c) = &self.clients {
            return Ok(c.clone());
        }
        let build = |follow: bool| {
            let p = policy.clone();
            let redirect = if follow {
                reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= MAX_REDIRECTS {
                        return attempt.error("fetch: too many redirects");
                    }
                    match p.check_url(attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(m) => attempt.error(Blocked(m)),
                    }
                })
            } else {
                reqwest::redirect::Policy::none()
            };
            reqwest::Client::builder()
                .no_proxy()
                .redirect(redirect)
                .dns_resolver(Arc::new(GuardedResolver(policy.clone())))
                .connect_timeout(Duration::from_secs(10))
                .timeout(FETCH_TIMEOUT)
                .build()
                .map_err(|e| format!("fetch: cannot build the HTTP client: {e}"))
        };
        let rt = self.runtime()?;
        let _enter = rt.enter();
        let clients = (build(true)?, build(false)?);
        self.clients = Some(clients.clone());
        Ok(clients)
    }

    /// Sets the guard (from `allow`, parsed again only when it differs
    /// from the last invocation's) and the body limit of the invocation that
    /// starts.
    pub(crate) fn begin(&mut self, allow: &[String], max_bytes: u64) {
        self.clear();
        if self.allow.as_deref() != Some(allow) {
            self.policy = Arc::new(Policy::new(allow));
            self.allow = Some(allow.to_vec());
        }
        self.max_bytes = max_bytes;
    }

    /// Starts one sub-request; its result arrives through [`Net::wait`].
    pub(crate) fn start(&mut self, id: u32, request: FetchRequest) {
        let max_bytes = self.max_bytes;
        let policy = self.policy.clone();
        let tx = self.tx.clone();
        let fail = |message: String, limit: bool| {
            let _ = tx.send((id, Err(FetchErr { limit, message })));
        };
        let url = match url::Url::parse(&request.url) {
            Ok(u) => u,
            Err(e) => return fail(format!("fetch: invalid URL '{}': {e}", request.url), false),
        };
        if let Err(m) = policy.check_url(&url) {
            return fail(m, true);
        }
        let (follow, manual) = match self.clients(&policy) {
            Ok(c) => c,
            Err(m) => return fail(m, false),
        };
        let client = if request.follow_redirects {
            follow
        } else {
            manual
        };
        let rt = match self.runtime() {
            Ok(rt) => rt,
            Err(m) => return fail(m, false),
        };
        let task = rt.spawn(async move {
            let result = perform(client, url, request, max_bytes).await;
            let _ = tx.send((id, result));
        });
        self.tasks.insert(id, task);
    }

    pub(crate) fn cancel(&mut self, id: u32) {
        if let Some(task) = self.tasks.remove(&id) {
            task.abort();
        }
    }

    /// Whether a sub-request is in flight or its result not yet taken.
    pub(crate) fn pending(&self) -> bool {
        !self.tasks.is_empty() || !self.rx.is_empty()
    }

    /// The next finished sub-request, waiting at most `timeout` (forever
    /// when `None`); `None` when the time ran out.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> Option<(u32, FetchResult)> {
        if let Ok(done) = self.rx.try_recv() {
            self.tasks.remove(&done.0);
            return Some(done);
        }
        let Some(rt) = self.rt.as_ref() else {
            if let Some(t) = timeout {
                std::thread::sleep(t);
            }
            return None;
        };
        let rx = &mut self.rx;
        let done = rt.block_on(async {
            match timeout {
                Some(t) => tokio::time::timeout(t, rx.recv()).await.ok().flatten(),
                None => rx.recv().await,
            }
        });
        if let Some(done) = &done {
            self.tasks.remove(&done.0);
        }
        done
    }

    /// Drops every sub-request of the invocation that ended.
    pub(crate) fn clear(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.abort();
        }
        while self.rx.try_recv().is_ok() {}
        self.clients = None;
    }
}

/// The guard's refusal inside reqwest's error chain (the resolver's error
/// may be re-wrapped on the way, so its message is recognised too).
fn blocked_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<Blocked>() {
            return Some(b.0.clone());
        }
        let text = err.to_string();
        if let Some(at) = text.find(BLOCKED_PREFIX) {
            return Some(text[at..].to_owned());
        }
        cur = err.source();
    }
    None
}

fn network_error(e: &reqwest::Error) -> FetchErr {
    if let Some(m) = blocked_in(e) {
        return FetchErr {
            limit: true,
            message: m,
        };
    }
    let mut message = format!("fetch failed: {e}");
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        message.push_str(&format!(": {err}"));
        cur = err.source();
    }
    FetchErr {
        limit: false,
        message,
    }
}

async fn perform(
    client: reqwest::Client,
    url: url::Url,
    request: FetchRequest,
    max_bytes: u64,
) -> FetchResult {
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|_| FetchErr {
        limit: false,
        message: format!("fetch: invalid method '{}'", request.method),
    })?;
    let mut builder = client.request(method, url.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    if let Some(body) = request.body {
        builder = builder.body(body);
    }
    let mut response = builder.send().await.map_err(|e| network_error(&e))?;
    let status = response.status();
    if request.error_on_redirect && status.is_redirection() {
        return Err(FetchErr {
            limit: false,
            message: format!("fetch: redirect ({status}) with redirect: 'error'"),
        });
    }
    let too_large = || FetchErr {
        limit: true,
        message: format!("fetch: the response body exceeds the limit of {max_bytes} bytes"),
    };
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Err(too_large());
    }
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.as_bytes().iter().map(|b| char::from(*b)).collect(),
            )
        })
        .collect();
    let final_url = response.url().to_string();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| network_error(&e))? {
        if (body.len() + chunk.len()) as u64 > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(FetchOk {
        status: status.as_u16(),
        status_text: status.canonical_reason().unwrap_or("").to_owned(),
        headers,
        body,
        redirected: final_url != url.as_str(),
        url: final_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    /// The guard is each invocation's own: parsed once for a list seen
    /// last time, made again when the list changed.
    #[test]
    fn the_guard_follows_each_invocations_allow_list() {
        let mut net = Net::new();
        let allow = vec!["10.0.0.0/8".to_owned()];
        net.begin(&allow, 1);
        let first = net.policy.clone();
        assert!(first.ip_allowed(ip("10.1.2.3")));
        net.begin(&allow, 1);
        assert!(Arc::ptr_eq(&first, &net.policy));
        net.begin(&[], 1);
        assert!(!net.policy.ip_allowed(ip("10.1.2.3")));
        net.begin(&["192.168.0.0/16".to_owned()], 1);
        assert!(net.policy.ip_allowed(ip("192.168.1.1")));
        assert!(!net.policy.ip_allowed(ip("10.1.2.3")));
    }

    #[test]
    fn the_guard_refuses_internal_addresses() {
        let p = Policy::new(&[]);
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "100.127.255.254",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(!p.ip_allowed(ip(blocked)), "{blocked} must be blocked");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert!(p.ip_allowed(ip(public)), "{public} must be allowed");
        }
    }

    #[test]
    fn fetch_allow_admits_cidrs_addresses_and_hosts() {
        let p = Policy::new(&[
            "10.0.0.0/8".into(),
            "127.0.0.1".into(),
            "Proxy.Internal:8080".into(),
        ]);
        assert!(p.ip_allowed(ip("10.9.8.7")));
        assert!(p.ip_allowed(ip("127.0.0.1")));
        assert!(!p.ip_allowed(ip("127.0.0.2")));
        assert!(!p.ip_allowed(ip("192.168.0.1")));
        assert!(p.host_allowed("proxy.internal"));
        assert!(!p.host_allowed("other.internal"));

        let p = Policy::new(&[
            "http://Gateway.Local:8000/base".into(),
            "[::1]:8080".into(),
            "[fd00::1]".into(),
        ]);
        assert!(p.host_allowed("gateway.local"));
        assert!(p.ip_allowed(ip("::1")));
        assert!(p.ip_allowed(ip("fd00::1")));
        assert!(!p.ip_allowed(ip("fd00::2")));
    }

    #[test]
    fn literal_urls_are_checked_before_any_request() {
        let p = Policy::new(&[]);
        let url = url::Url::parse("http://169.254.169.254/latest/meta-data/").expect("url");
        let err = p.check_url(&url).expect_err("metadata address");
        assert!(err.contains("169.254.169.254"), "{err}");
        let url = url::Url::parse("http://[::1]:8080/").expect("url");
        assert!(p.check_url(&url).is_err());
        let url = url::Url::parse("http://example.com/").expect("url");
        assert!(p.check_url(&url).is_ok());
    }
}
