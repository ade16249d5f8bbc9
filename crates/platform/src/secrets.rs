//! Validation of the platform secrets shared by several services, held
//! as `secrecy` secrets: their `Debug` prints `[REDACTED]`, and reading one
//! takes an explicit [`ExposeSecret::expose_secret`], so a secret cannot
//! reach a log line or an error body by accident (and is zeroed on drop).

use base64::Engine as _;
pub use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::config::{ConfigError, Env, Source, err};

/// Minimum length of `JWT_SECRET` in bytes (HS256 wants at least 256 bits).
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// `JWT_SECRET`: signs admin and internal tokens.
pub fn jwt_secret<S: Source>(env: &Env<S>) -> Result<SecretString, ConfigError> {
    env.secret(
        crate::env::JWT_SECRET,
        MIN_JWT_SECRET_LEN,
        "the platform secret that signs admin and internal tokens",
    )
    .map(SecretString::from)
}

/// 32 key bytes, zeroed on drop (what [`MasterKey`] holds).
#[derive(Clone)]
pub struct KeyBytes(pub [u8; 32]);

impl secrecy::zeroize::Zeroize for KeyBytes {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl secrecy::CloneableSecret for KeyBytes {}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes([REDACTED])")
    }
}

/// `MADBASE_MASTER_KEY`, decoded: its `Debug` never shows the bytes.
pub type MasterKey = SecretBox<KeyBytes>;

/// `MADBASE_MASTER_KEY`: 32 bytes, base64, encrypting tenant secrets at rest.
pub fn master_key<S: Source>(env: &Env<S>) -> Result<MasterKey, ConfigError> {
    const VAR: &str = crate::env::MADBASE_MASTER_KEY;
    let raw = env.required(
        VAR,
        "32 random bytes, base64; encrypts tenant secrets at rest; e.g. `openssl rand -base64 32`",
    )?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|e| err(VAR, format!("is not valid base64: {e}")))?;
    let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        err(
            VAR,
            format!("decodes to {} bytes; exactly 32 are required", b.len()),
        )
    })?;
    Ok(SecretBox::new(Box::new(KeyBytes(key))))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(k: &str, v: &str) -> Env<HashMap<String, String>> {
        Env::new(HashMap::from([(k.to_owned(), v.to_owned())]))
    }

    #[test]
    fn master_key_must_be_32_bytes_of_base64() {
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let key = master_key(&env(crate::env::MADBASE_MASTER_KEY, &good)).expect("valid");
        assert_eq!(key.expose_secret().0, [7u8; 32]);
        assert!(format!("{key:?}").contains("[REDACTED]"), "{key:?}");
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let e = master_key(&env(crate::env::MADBASE_MASTER_KEY, &short)).expect_err("short");
        assert!(e.problem.contains("16 bytes"), "{e}");
        let e =
            master_key(&env(crate::env::MADBASE_MASTER_KEY, "not base64!")).expect_err("garbage");
        assert!(e.problem.contains("base64"), "{e}");
        let e = master_key(&env("OTHER", "x")).expect_err("missing");
        assert_eq!(e.var, crate::env::MADBASE_MASTER_KEY);
    }

    #[test]
    fn jwt_secret_has_a_minimum_length() {
        assert!(jwt_secret(&env(crate::env::JWT_SECRET, "short")).is_err());
        let secret = jwt_secret(&env(crate::env::JWT_SECRET, &"x".repeat(32))).expect("valid");
        assert_eq!(secret.expose_secret(), "x".repeat(32));
        assert!(!format!("{secret:?}").contains("xxx"));
    }
}
