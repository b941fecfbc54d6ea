//! Signed tokens: HS256 JWTs with `sub, exp, iat, type, jti` (and `iat_ms`, the issue time
//! in milliseconds, which revocation compares against so that a token issued right after a
//! "revoke everything" is not caught by it).

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub exp: i64,
    pub iat: i64,
    pub iat_ms: i64,
    #[serde(rename = "type")]
    pub kind: TokenType,
    pub jti: Uuid,
}

impl Claims {
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or_default()
    }

    pub fn issued_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.iat_ms).unwrap_or_default()
    }
}

/// Signs and checks tokens with the secret from the environment.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

/// Why a secret was refused.
#[derive(Debug, thiserror::Error)]
#[error("the token signing secret must be at least 32 bytes")]
pub struct WeakSecret;

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < 32 {
            return Err(WeakSecret);
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            access_ttl: Duration::minutes(15),
            refresh_ttl: Duration::days(7),
        })
    }

    /// Issues a token of `kind` for `user`, valid from `now`.
    pub fn issue(
        &self,
        user: Uuid,
        kind: TokenType,
        now: DateTime<Utc>,
    ) -> Result<(String, Claims), jsonwebtoken::errors::Error> {
        let ttl = match kind {
            TokenType::Access => self.access_ttl,
            TokenType::Refresh => self.refresh_ttl,
        };
        let claims = Claims {
            sub: user,
            exp: (now + ttl).timestamp(),
            iat: now.timestamp(),
            iat_ms: now.timestamp_millis(),
            kind,
            jti: Uuid::now_v7(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// Checks signature, expiry and type.
    pub fn verify(&self, token: &str, kind: TokenType) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = decode::<Claims>(token, &self.decoding, &validation)
            .ok()?
            .claims;
        (claims.kind == kind).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[7u8; 32]).expect("a strong secret")
    }

    #[test]
    fn a_token_verifies_only_as_its_own_type_and_until_it_expires() {
        let keys = keys();
        let user = Uuid::now_v7();
        let (token, claims) = keys
            .issue(user, TokenType::Access, Utc::now())
            .expect("signed");
        assert_eq!(
            keys.verify(&token, TokenType::Access).map(|c| c.sub),
            Some(user)
        );
        assert!(keys.verify(&token, TokenType::Refresh).is_none());
        assert_ne!(
            claims.jti,
            keys.issue(user, TokenType::Access, Utc::now())
                .expect("signed")
                .1
                .jti
        );
        let (old, _) = keys
            .issue(user, TokenType::Access, Utc::now() - Duration::minutes(16))
            .expect("signed");
        assert!(keys.verify(&old, TokenType::Access).is_none(), "expired");
    }

    #[test]
    fn a_token_signed_with_another_secret_or_altered_is_refused() {
        let (token, _) = keys()
            .issue(Uuid::now_v7(), TokenType::Access, Utc::now())
            .expect("signed");
        let other = TokenKeys::new(&[8u8; 32]).expect("a strong secret");
        assert!(other.verify(&token, TokenType::Access).is_none());
        let mut altered = token.clone();
        altered.pop();
        assert!(keys().verify(&altered, TokenType::Access).is_none());
        assert!(TokenKeys::new(b"short").is_err());
    }
}
