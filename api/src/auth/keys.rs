//! API keys: `omoi_sk_` followed by 40 random alphanumerics. Only a SHA-256 of the key is
//! stored; its first 16 characters (the prefix) find the row and identify it in listings.

use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use ring::digest::{digest, SHA256};

pub const KEY_MARKER: &str = "omoi_sk_";
const PREFIX_CHARS: usize = 16;

/// A new key, its prefix and the hash to store.
pub struct NewKey {
    pub secret: String,
    pub prefix: String,
    pub sha256: Vec<u8>,
}

pub fn generate() -> NewKey {
    let secret = format!("{KEY_MARKER}{}", Alphanumeric.sample_string(&mut OsRng, 40));
    NewKey {
        prefix: prefix_of(&secret).to_string(),
        sha256: sha256(&secret),
        secret,
    }
}

pub fn prefix_of(key: &str) -> &str {
    key.get(..PREFIX_CHARS).unwrap_or(key)
}

pub fn sha256(key: &str) -> Vec<u8> {
    digest(&SHA256, key.as_bytes()).as_ref().to_vec()
}

/// Compares two digests without an early exit.
pub fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_verify_by_digest() {
        let a = generate();
        let b = generate();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(KEY_MARKER) && a.secret.len() == KEY_MARKER.len() + 40);
        assert_eq!(a.prefix.len(), 16);
        assert!(same_digest(&sha256(&a.secret), &a.sha256));
        assert!(!same_digest(&sha256(&b.secret), &a.sha256));
    }
}
