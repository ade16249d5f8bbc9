//! The frames between the functions service (the host) and a
//! `madbase functions-worker` process, over the worker's stdin (host →
//! worker) and stdout (worker → host). The worker's stderr is its log.
//!
//! A frame is `[u32 BE header length][u32 BE body length][header][body]`:
//! the header is JSON (one of [`ToWorker`] / [`FromWorker`]), the body is
//! the raw HTTP body of the request or response it carries (empty
//! otherwise), so bodies are never base64- or JSON-encoded. An invocation's
//! request headers follow its body as length-prefixed strings (see
//! [`Frame`]), not in the JSON.
//!
//! One worker runs one invocation at a time: the host writes one
//! [`ToWorker::Invoke`], the worker answers with exactly one
//! [`FromWorker::Reply`] carrying the same `id`. When the worker does not hold
//! the function's compiled source (by [`FunctionKey`]), it answers
//! [`Outcome::NeedSource`] and the host sends the same invocation again with
//! `source` set, or with the module's bytecode (`bytecode_len`) when the
//! host has compiled it.

use serde::{Deserialize, Serialize};

/// A frame's header may not exceed this (headers, env, logs).
pub const MAX_HEADER: u32 = 8 * 1024 * 1024;
/// A frame's body may not exceed this.
pub const MAX_BODY: u32 = 64 * 1024 * 1024;

/// Which compiled function: one runtime per key, never shared between keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FunctionKey {
    /// The tenant id.
    pub tenant: String,
    /// The function's name.
    pub function: String,
    /// The deployed version; a redeploy gets a new key.
    pub version: i64,
}

/// Per-invocation limits, resolved by the host (platform defaults and the
/// tenant's overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU time of the invocation's JavaScript (interrupt handler).
    pub cpu_ms: u64,
    /// Memory limit of the function's runtime.
    pub memory_bytes: u64,
    /// Largest response body the function may produce.
    pub max_response_bytes: u64,
    /// Sub-requests (`fetch`) per invocation.
    pub max_fetches: u32,
    /// Largest sub-request response body.
    pub max_fetch_bytes: u64,
}

/// Host → worker.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Run the function on one request; the frame's body is the request body.
    Invoke(Invoke),
}

/// One request for a function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invoke {
    /// Echoed in the reply.
    pub id: u64,
    /// Which compiled function to run.
    pub key: FunctionKey,
    /// The module's source; `None` when the host believes the worker holds
    /// the key already (the worker answers [`Outcome::NeedSource`] if not).
    pub source: Option<String>,
    /// When set (and `source` is not), the frame's body starts with this
    /// many bytes of the module compiled by [`crate::worker::compile`] and
    /// the request body follows: a worker of the same build loads that
    /// instead of parsing the source; another build answers
    /// [`Outcome::NeedSource`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytecode_len: Option<u32>,
    /// What `Deno.env.get` sees: the tenant's secrets and `SUPABASE_*`.
    /// `None`: what the last invocation of this key in this worker saw
    /// (the host sends it with the module and whenever it changed: most
    /// warm invocations carry none, and the worker does not set it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<(String, String)>>,
    /// The platform request id (for log lines).
    pub request_id: String,
    /// The HTTP method the function sees as `request.method`.
    pub method: String,
    /// The absolute URL the function sees as `request.url`.
    pub url: String,
    /// The request headers the function sees. Framed after the body, not
    /// in the JSON header (see [`Frame`]): most of an invocation's bytes,
    /// and JSON escapes and unescapes every one of them.
    #[serde(skip)]
    pub headers: HeaderList,
    /// The limits this invocation runs under.
    pub limits: Limits,
    /// Hosts and CIDRs `fetch` may reach even when private (SSRF guard),
    /// e.g. the platform's own proxy for `SUPABASE_URL`.
    pub fetch_allow: Vec<String>,
}

/// Worker → host.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The answer to [`ToWorker::Invoke`]; for [`Outcome::Response`] the
    /// frame's body is the response body.
    Reply(Reply),
}

// Both frames are read with their tag first, as `Serialize` writes it: the
// derived reading of an internally tagged enum collects every field into an
// intermediate tree before it looks at the tag (measured: most of the
// worker's Rust instructions per warm invocation went there).
impl<'de> Deserialize<'de> for ToWorker {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TagFirst::<Invoke>::new("type", "invoke"))
            .map(ToWorker::Invoke)
    }
}

impl<'de> Deserialize<'de> for FromWorker {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TagFirst::<Reply>::new("type", "reply"))
            .map(FromWorker::Reply)
    }
}

/// Reads `{"<tag>": "<name>", …the fields of T}`: the tag must come first;
/// the rest is read as `T`'s own map, in place.
struct TagFirst<T> {
    tag: &'static str,
    name: &'static str,
    value: std::marker::PhantomData<T>,
}

impl<T> TagFirst<T> {
    fn new(tag: &'static str, name: &'static str) -> Self {
        TagFirst {
            tag,
            name,
            value: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for TagFirst<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an object starting with \"{}\": \"{}\"",
            self.tag, self.name
        )
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        use serde::de::Error as _;
        match map.next_key::<String>()? {
            Some(key) if key == self.tag => {}
            _ => {
                return Err(A::Error::custom(format_args!(
                    "the frame's first field must be \"{}\"",
                    self.tag
                )));
            }
        }
        let name: String = map.next_value()?;
        if name != self.name {
            return Err(A::Error::custom(format_args!(
                "unknown frame type `{name}`, expected `{}`",
                self.name
            )));
        }
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

/// The answer to one invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// The [`Invoke::id`] this answers.
    pub id: u64,
    /// How the invocation ended.
    pub outcome: Outcome,
    /// `console.*` output of this invocation, in order.
    pub logs: Vec<LogLine>,
    /// True when this invocation compiled the module (a cold start).
    pub cold: bool,
    /// CPU time the worker spent on this invocation, in microseconds.
    pub cpu_us: u64,
}

/// An invocation's request headers, in order, as they travel and as the
/// engine hands them to JavaScript: names and values alternating, joined by
/// NUL (which neither can hold: `http` refuses it in names and values). The
/// host builds it without a string per header; the worker checks it once
/// (UTF-8, names paired with values) and, when every header is already in
/// the form `Headers` keeps, passes it on as it is.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    text: String,
}

impl HeaderList {
    /// An empty list with room for `bytes` of names and values.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
        }
    }

    /// Adds a header at the end; one whose name is empty or whose name or
    /// value holds a NUL (no HTTP header can) is left out, and `false`
    /// returned.
    pub fn push(&mut self, name: &str, value: &str) -> bool {
        if name.is_empty() || name.contains('\0') || value.contains('\0') {
            return false;
        }
        if !self.text.is_empty() {
            self.text.push('\0');
        }
        self.text.push_str(name);
        self.text.push('\0');
        self.text.push_str(value);
        true
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        // One separator inside each header and one between two headers.
        self.text.bytes().filter(|&b| b == 0).count().div_ceil(2)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The names and values joined by NUL (empty when there are none).
    pub fn joined(&self) -> &str {
        &self.text
    }

    /// The names and values, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = (!self.text.is_empty())
            .then(|| self.text.split('\0'))
            .into_iter()
            .flatten();
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for HeaderList {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut list = Self::default();
        for (name, value) in iter {
            list.push(name.as_ref(), value.as_ref());
        }
        list
    }
}

impl std::fmt::Debug for HeaderList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The function answered.
    Response {
        /// The HTTP status the function answered.
        status: u16,
        /// The response headers, in order.
        headers: Vec<(String, String)>,
    },
    /// The worker does not hold this key: send the source.
    NeedSource,
    /// The function failed; `message` is safe to show to the caller.
    Error {
        /// The kind of failure.
        error: FunctionError,
        /// What went wrong, safe to show to the caller.
        message: String,
    },
}

/// Why a function failed (the host maps each to a status and a code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionError {
    /// An uncaught exception or rejected promise.
    Exception,
    /// The module registered no handler (`Deno.serve` / `export default`).
    NoHandler,
    /// The handler's value was not a `Response`.
    BadResponse,
    /// The invocation exceeded [`Limits::cpu_ms`].
    CpuLimit,
    /// The runtime exceeded [`Limits::memory_bytes`].
    MemoryLimit,
    /// The response body exceeded [`Limits::max_response_bytes`].
    ResponseTooLarge,
    /// Too many or too large sub-requests, or a blocked address.
    FetchLimit,
}

/// One `console.*` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// `debug`, `info` (log), `warn` or `error`.
    pub level: String,
    /// The call's arguments, formatted and joined by spaces.
    pub message: String,
}

/// A malformed or oversized frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header length exceeds [`MAX_HEADER`].
    #[error("frame header of {0} bytes exceeds the limit")]
    HeaderTooLarge(u32),
    /// The body length exceeds [`MAX_BODY`].
    #[error("frame body of {0} bytes exceeds the limit")]
    BodyTooLarge(u32),
    /// The header is not a valid JSON message.
    #[error("malformed frame header: {0}")]
    Json(#[from] serde_json::Error),
    /// What follows the body is not what the message needs (see [`Frame`]).
    #[error("malformed frame trailer: {0}")]
    Trailer(String),
    /// Reading or writing the frame failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The 8-byte prefix of a frame: header and body lengths, checked.
pub fn parse_prefix(prefix: [u8; 8]) -> Result<(u32, u32), FrameError> {
    let header = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let body = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if header > MAX_HEADER {
        return Err(FrameError::HeaderTooLarge(header));
    }
    if body > MAX_BODY {
        return Err(FrameError::BodyTooLarge(body));
    }
    Ok((header, body))
}

/// A message that is framed: its JSON header, and what of it travels
/// after the body instead (an invocation's request headers).
pub trait Frame: Serialize + serde::de::DeserializeOwned {
    /// Appends what goes after the body (nothing by default).
    fn write_trailer(&self, _out: &mut Vec<u8>) {}
    /// Takes that back off the end of `body`.
    fn take_trailer(&mut self, _body: &mut Vec<u8>) -> Result<(), FrameError> {
        Ok(())
    }
}

impl Frame for FromWorker {}

/// An invocation's headers follow its body: names and values joined by NUL
/// (see [`HeaderList`]), then their length in bytes, 4 bytes big-endian
/// (read from the end: the body is not moved).
impl Frame for ToWorker {
    fn write_trailer(&self, out: &mut Vec<u8>) {
        let ToWorker::Invoke(invoke) = self;
        out.extend_from_slice(invoke.headers.text.as_bytes());
        // Over MAX_BODY the frame is refused anyway.
        let len = u32::try_from(invoke.headers.text.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
    }

    fn take_trailer(&mut self, body: &mut Vec<u8>) -> Result<(), FrameError> {
        let ToWorker::Invoke(invoke) = self;
        let bad = |what: &str| FrameError::Trailer(what.to_owned());
        let end = body
            .len()
            .checked_sub(4)
            .ok_or_else(|| bad("no headers trailer"))?;
        let len = u32::from_be_bytes([body[end], body[end + 1], body[end + 2], body[end + 3]]);
        let start = end
            .checked_sub(len as usize)
            .ok_or_else(|| bad("a headers trailer longer than the body"))?;
        let text = std::str::from_utf8(&body[start..end])
            .map_err(|_| bad("headers that are not UTF-8"))?;
        // Names pair with values when the separators are odd in number:
        // counted, not split (one vectorised pass). An empty name is the
        // engine's to drop, as any header `Headers` could not hold.
        if !text.is_empty() && text.bytes().filter(|&b| b == 0).count().is_multiple_of(2) {
            return Err(bad("a header name without its value"));
        }
        invoke.headers = HeaderList {
            text: text.to_owned(),
        };
        body.truncate(start);
        Ok(())
    }
}

/// One encoded frame, ready to write: the header serialised in place (one
/// buffer, sized for a typical header and the body, no copy of the JSON),
/// the body, then the message's trailer (see [`Frame`]).
pub fn encode<T: Frame>(header: &T, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(8 + 2048 + body.len());
    out.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut out, header)?;
    let header_len = u32::try_from(out.len() - 8)
        .ok()
        .filter(|n| *n <= MAX_HEADER)
        .ok_or(FrameError::HeaderTooLarge(u32::MAX))?;
    let body_start = out.len();
    out.extend_from_slice(body);
    header.write_trailer(&mut out);
    let body_len = u32::try_from(out.len() - body_start)
        .ok()
        .filter(|n| *n <= MAX_BODY)
        .ok_or(FrameError::BodyTooLarge(u32::MAX))?;
    out[..4].copy_from_slice(&header_len.to_be_bytes());
    out[4..8].copy_from_slice(&body_len.to_be_bytes());
    Ok(out)
}

/// Reads one frame (blocking): `Ok(None)` at a clean end of stream.
pub fn read_frame<T: Frame, R: std::io::Read>(
    reader: &mut R,
) -> Result<Option<(T, Vec<u8>)>, FrameError> {
    let mut prefix = [0u8; 8];
    match reader.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (header_len, body_len) = parse_prefix(prefix)?;
    let mut header = vec![0u8; header_len as usize];
    reader.read_exact(&mut header)?;
    let mut body = vec![0u8; body_len as usize];
    reader.read_exact(&mut body)?;
    let mut msg: T = serde_json::from_slice(&header)?;
    msg.take_trailer(&mut body)?;
    Ok(Some((msg, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_with_its_body() -> Result<(), FrameError> {
        let reply = FromWorker::Reply(Reply {
            id: 7,
            outcome: Outcome::Response {
                status: 201,
                headers: vec![("content-type".into(), "application/json".into())],
            },
            logs: vec![LogLine {
                level: "info".into(),
                message: "hi".into(),
            }],
            cold: true,
            cpu_us: 42,
        });
        let bytes = encode(&reply, b"{\"ok\":true}")?;
        let mut cursor = std::io::Cursor::new(bytes);
        let Some((back, body)) = read_frame::<FromWorker, _>(&mut cursor)? else {
            panic!("no frame read back");
        };
        let FromWorker::Reply(back) = back;
        assert_eq!(back.id, 7);
        assert_eq!(body, b"{\"ok\":true}");
        assert!(read_frame::<FromWorker, _>(&mut cursor)?.is_none());
        Ok(())
    }

    #[test]
    fn an_invocation_round_trips_and_a_frame_must_start_with_its_type() -> Result<(), FrameError> {
        let invoke = Invoke {
            id: 3,
            key: FunctionKey {
                tenant: "t".into(),
                function: "f".into(),
                version: 2,
            },
            source: None,
            bytecode_len: Some(10),
            env: Some(vec![("A".into(), "\"quoted\" \u{e9}".into())]),
            request_id: "r".into(),
            method: "POST".into(),
            url: "http://x/".into(),
            headers: [("a", "1"), ("b", "2")].into_iter().collect(),
            limits: Limits {
                cpu_ms: 1,
                memory_bytes: 2,
                max_response_bytes: 3,
                max_fetches: 4,
                max_fetch_bytes: 5,
            },
            fetch_allow: vec!["127.0.0.1".into()],
        };
        let bytes = encode(&ToWorker::Invoke(invoke.clone()), b"body")?;
        assert!(bytes[8..].starts_with(b"{\"type\":\"invoke\","));
        let Some((ToWorker::Invoke(back), body)) =
            read_frame::<ToWorker, _>(&mut std::io::Cursor::new(bytes))?
        else {
            panic!("no frame read back");
        };
        assert_eq!(body, b"body");
        assert_eq!(back.key, invoke.key);
        assert_eq!(back.env, invoke.env);
        assert_eq!(back.headers, invoke.headers);
        assert_eq!(back.bytecode_len, Some(10));
        assert_eq!(back.limits, invoke.limits);

        let refused = |json: &str| {
            serde_json::from_str::<ToWorker>(json)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let later = refused(r#"{"id":1,"type":"invoke"}"#);
        assert!(
            later
                .as_ref()
                .is_err_and(|e| e.contains("first field must be \"type\"")),
            "{later:?}"
        );
        let other = refused(r#"{"type":"reply","id":1}"#);
        assert!(
            other
                .as_ref()
                .is_err_and(|e| e.contains("unknown frame type `reply`")),
            "{other:?}"
        );
        let missing = refused(r#"{"type":"invoke","id":1}"#);
        assert!(
            missing.as_ref().is_err_and(|e| e.contains("missing field")),
            "{missing:?}"
        );
        assert!(refused("[]").is_err());
        Ok(())
    }

    /// The headers travel after the body and come off it whole; a trailer
    /// that does not add up is refused, never read past.
    #[test]
    fn an_invocations_headers_trail_its_body() -> Result<(), FrameError> {
        let mut invoke = serde_json::from_str::<ToWorker>(
            r#"{"type":"invoke","id":1,"key":{"tenant":"t","function":"f","version":1},
                "source":null,"request_id":"r","method":"GET","url":"http://x/",
                "limits":{"cpu_ms":1,"memory_bytes":1,"max_response_bytes":1,"max_fetches":1,"max_fetch_bytes":1},
                "fetch_allow":[]}"#,
        )
        .map_err(FrameError::Json)?;
        let ToWorker::Invoke(i) = &mut invoke;
        i.headers = [("authorization", "Bearer \"x\" \\ é"), ("empty", "")]
            .into_iter()
            .collect();
        let bytes = encode(&invoke, b"the body")?;
        // Not in the JSON.
        assert!(!String::from_utf8_lossy(&bytes).contains("\"headers\""));
        let Some((ToWorker::Invoke(back), body)) =
            read_frame::<ToWorker, _>(&mut std::io::Cursor::new(&bytes))?
        else {
            panic!("no frame");
        };
        assert_eq!(body, b"the body");
        let ToWorker::Invoke(sent) = &invoke;
        assert_eq!(back.headers, sent.headers);
        assert_eq!(
            back.headers.iter().collect::<Vec<_>>(),
            [("authorization", "Bearer \"x\" \\ é"), ("empty", "")]
        );
        assert_eq!(back.headers.len(), 2);
        assert_eq!(
            back.headers.joined(),
            "authorization\0Bearer \"x\" \\ é\0empty\0"
        );

        // What no HTTP header can be is not taken in.
        let mut list = HeaderList::default();
        assert!(list.iter().next().is_none());
        assert!(list.push("a", ""));
        assert!(!list.push("", "x"));
        assert!(!list.push("b", "x\0y"));
        assert!(!list.push("c\0", "x"));
        assert_eq!(list.iter().collect::<Vec<_>>(), [("a", "")]);
        assert_eq!((list.len(), list.joined()), (1, "a\0"));

        // The body part of a frame, trailer included, replaced by `tail`.
        let header_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let with_body = |tail: &[u8]| {
            let mut f = bytes[..8 + header_len].to_vec();
            f[4..8].copy_from_slice(&u32::try_from(tail.len()).unwrap_or(0).to_be_bytes());
            f.extend_from_slice(tail);
            read_frame::<ToWorker, _>(&mut std::io::Cursor::new(f))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let trailer = |block: &[u8]| {
            [
                b"body".as_slice(),
                block,
                &u32::try_from(block.len()).unwrap_or(0).to_be_bytes(),
            ]
            .concat()
        };
        assert_eq!(with_body(&trailer(&[])), Ok(()));
        assert_eq!(with_body(&trailer(b"n\0v\0m\0")), Ok(()));
        for (tail, why) in [
            (b"ab".to_vec(), "no headers trailer"),
            (
                [b"ab".as_slice(), &99u32.to_be_bytes()].concat(),
                "longer than the body",
            ),
            (trailer(b"name"), "name without its value"),
            (trailer(b"n\0v\0m"), "name without its value"),
            (trailer(&[b'n', 0, 0xff, 0xfe]), "not UTF-8"),
        ] {
            let got = with_body(&tail);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{why}: {got:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_allocating() {
        let mut prefix = [0u8; 8];
        prefix[..4].copy_from_slice(&(MAX_HEADER + 1).to_be_bytes());
        assert!(matches!(
            parse_prefix(prefix),
            Err(FrameError::HeaderTooLarge(_))
        ));
        prefix[..4].copy_from_slice(&1u32.to_be_bytes());
        prefix[4..].copy_from_slice(&(MAX_BODY + 1).to_be_bytes());
        assert!(matches!(
            parse_prefix(prefix),
            Err(FrameError::BodyTooLarge(_))
        ));
    }
}
