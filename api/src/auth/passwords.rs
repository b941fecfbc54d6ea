//! Passwords: the original's rules, hashed with argon2id.
//!
//! Hashing and verification use this thread's kept working memory (19 MiB for the
//! default parameters) instead of allocating it per hash. Allocating it each time made
//! glibc's heap grow with every hash (the freed block raises the mmap threshold, so the
//! next ones land in heaps that fragment and are not returned): 30 logins run two at a
//! time peaked at 401 MiB, against ~80 MiB with the memory kept. The API runs hashes on a
//! fixed set of threads (`guard`), so that is one buffer per thread.

use std::cell::RefCell;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{
    Decimal, Ident, Output, ParamsString, PasswordHash, PasswordHasher, PasswordVerifier, Salt,
    SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Why a password was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    #[error("the password must have at least 8 characters")]
    TooShort,
    #[error("the password must have at most 128 characters")]
    TooLong,
    #[error("the password needs an upper-case letter, a lower-case letter, a digit and a special character")]
    MissingCharacterClass,
}

/// At least 8 characters with an upper-case and a lower-case ASCII letter, a digit, and a
/// special character: anything but an ASCII letter or digit (as documented by
/// `schemas::new_password`).
pub fn check_strength(password: &str) -> Result<(), WeakPassword> {
    let length = password.chars().count();
    if length < 8 {
        return Err(WeakPassword::TooShort);
    }
    if length > 128 {
        return Err(WeakPassword::TooLong);
    }
    let has = |f: fn(&char) -> bool| password.chars().any(|c| f(&c));
    let complete = has(char::is_ascii_uppercase)
        && has(char::is_ascii_lowercase)
        && has(char::is_ascii_digit)
        && has(|c| !c.is_ascii_alphanumeric());
    if !complete {
        return Err(WeakPassword::MissingCharacterClass);
    }
    Ok(())
}

/// An argon2id PHC string.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(KeptMemory
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            KeptMemory
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

thread_local! {
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Argon2 exactly as `Argon2`'s own `PasswordHasher` (same PHC strings; verification,
/// with its constant-time comparison, comes from the blanket `PasswordVerifier`), over
/// this thread's kept memory.
struct KeptMemory;

impl PasswordHasher for KeptMemory {
    type Params = Params;

    fn hash_password_customized<'a>(
        &self,
        password: &[u8],
        algorithm: Option<Ident<'a>>,
        version: Option<Decimal>,
        params: Params,
        salt: impl Into<Salt<'a>>,
    ) -> argon2::password_hash::Result<PasswordHash<'a>> {
        let algorithm = algorithm
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let salt = salt.into();
        let mut salt_buffer = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_buffer)?;
        let argon = Argon2::new(algorithm, version, params.clone());
        let length = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let output = Output::init_with(length, |out| {
            with_memory(params.block_count(), |memory| {
                argon.hash_password_into_with_memory(password, salt_bytes, out, memory)
            })
            .map_err(Into::into)
        })?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(output),
        })
    }
}

/// Runs `f` over `blocks` blocks of this thread's memory, grown once when too small.
/// Argon2 overwrites every block before reading it, so what a previous hash left is
/// never an input.
fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        f(&mut memory[..blocks])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_password_rules_apply() {
        assert_eq!(check_strength("Sh0rt!"), Err(WeakPassword::TooShort));
        assert_eq!(
            check_strength("alllowercase1!"),
            Err(WeakPassword::MissingCharacterClass)
        );
        assert_eq!(
            check_strength("NoDigitsHere!"),
            Err(WeakPassword::MissingCharacterClass)
        );
        assert_eq!(
            check_strength("NoSpecial123"),
            Err(WeakPassword::MissingCharacterClass)
        );
        assert_eq!(check_strength("Go0d-enough"), Ok(()));
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash("Go0d-enough").expect("hashed");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify("Go0d-enough", &phc));
        assert!(!verify("Go0d-enougH", &phc));
        assert!(!verify("Go0d-enough", "not a hash"));
    }

    #[test]
    fn hashes_are_argon2s_own_both_ways() {
        let ours = hash("Go0d-enough").expect("hashed");
        let parsed = PasswordHash::new(&ours).expect("a PHC string");
        assert!(Argon2::default()
            .verify_password(b"Go0d-enough", &parsed)
            .is_ok());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"Go0d-enough", &salt)
            .expect("hashed")
            .to_string();
        assert!(verify("Go0d-enough", &theirs));
        assert!(!verify("Go0d-enougH", &theirs));
        // Other parameters (an older or stronger setting) verify too.
        let small = Params::new(8 * 1024, 3, 1, None).expect("params");
        let other = Argon2::new(Algorithm::Argon2id, Version::V0x13, small)
            .hash_password(b"Go0d-enough", &salt)
            .expect("hashed")
            .to_string();
        assert!(verify("Go0d-enough", &other));
        assert!(!verify("Go0d-enougH", &other));
    }
}
