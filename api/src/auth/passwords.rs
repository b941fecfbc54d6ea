//! Passwords: the original's rules, hashed with argon2id.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

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

/// At least 8 characters with upper, lower, digit and special character.
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
        && has(|c| !c.is_alphanumeric());
    if !complete {
        return Err(WeakPassword::MissingCharacterClass);
    }
    Ok(())
}

/// An argon2id PHC string.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
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
}
