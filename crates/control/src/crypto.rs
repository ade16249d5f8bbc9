//! Tenant secrets at rest: AES-256-GCM under `MADBASE_MASTER_KEY`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};

const NONCE_LEN: usize = 12;

/// Encrypts and decrypts tenant secrets.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

/// Decryption failed: wrong master key or tampered data.
#[derive(Debug, thiserror::Error)]
#[error("cannot decrypt a stored secret: wrong MADBASE_MASTER_KEY or corrupted data")]
pub struct OpenError;

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Sealer {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// `nonce || ciphertext`, with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
        let nonce = Nonce::from_slice(&nonce_bytes);
        // Encryption with a valid key and nonce cannot fail.
        let ciphertext = self.cipher.encrypt(nonce, plaintext).unwrap_or_default();
        let mut out = nonce_bytes.to_vec();
        out.extend(ciphertext);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| OpenError)
    }

    pub fn open_string(&self, sealed: &[u8]) -> Result<String, OpenError> {
        String::from_utf8(self.open(sealed)?).map_err(|_| OpenError)
    }
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The OS RNG failing is not recoverable; getrandom only fails on
    // platforms without one.
    if let Err(e) = getrandom::fill(&mut buf) {
        panic!("the operating system's random number generator failed: {e}");
    }
    buf
}

/// A random secret: 32 bytes as 64 hex characters (safe in SQL literals and URLs).
pub fn random_secret() -> String {
    random_bytes::<32>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_wrong_key() {
        let a = Sealer::new(&[1; 32]);
        let sealed = a.seal(b"secret");
        assert_ne!(&sealed[12..], b"secret");
        assert_eq!(a.open(&sealed).expect("opens"), b"secret");
        assert!(Sealer::new(&[2; 32]).open(&sealed).is_err());
        assert_ne!(a.seal(b"secret"), sealed, "fresh nonce each time");
        assert_eq!(random_secret().len(), 64);
    }
}
