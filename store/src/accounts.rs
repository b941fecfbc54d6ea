//! Accounts and credentials: users, login failures, refresh and revoked tokens, API keys,
//! and the organization-membership index the authorization reads.
//!
//! Hashing and token signing happen in the API crate; this module only stores and finds.

use chrono::{DateTime, Utc};
use omoi_domain::access::Role;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// A user as the authentication needs it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub display_name: String,
    pub is_super_admin: bool,
    pub tokens_valid_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

const USER_COLUMNS: &str =
    "id, email, password_hash, display_name, is_super_admin, tokens_valid_after, created_at";

fn user_from(row: &sqlx::postgres::PgRow) -> Result<UserRecord, sqlx::Error> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        display_name: row.try_get("display_name")?,
        is_super_admin: row.try_get("is_super_admin")?,
        tokens_valid_after: row.try_get("tokens_valid_after")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Inserts a user; the email must be lower-cased already.
pub async fn create_user(
    pool: &PgPool,
    id: Uuid,
    email: &str,
    password_hash: &str,
    display_name: &str,
) -> Result<UserRecord, CreateUserError> {
    let sql = format!(
        "insert into users (id, email, password_hash, display_name) values ($1, $2, $3, $4)
         returning {USER_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(id)
        .bind(email)
        .bind(password_hash)
        .bind(display_name)
        .fetch_one(pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => CreateUserError::EmailTaken,
            _ => CreateUserError::Database(e),
        })?;
    Ok(user_from(&row)?)
}

pub async fn user_by_email(pool: &PgPool, email: &str) -> Result<Option<UserRecord>, sqlx::Error> {
    let sql = format!("select {USER_COLUMNS} from users where email = $1");
    sqlx::query(&sql)
        .bind(email)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(user_from)
        .transpose()
}

pub async fn user_by_id(pool: &PgPool, id: Uuid) -> Result<Option<UserRecord>, sqlx::Error> {
    let sql = format!("select {USER_COLUMNS} from users where id = $1");
    sqlx::query(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(user_from)
        .transpose()
}

/// Everything needed to accept an access token, in one round trip: the user, whether the
/// token was revoked, and the user's memberships.
#[derive(Debug, Clone)]
pub struct AccessCheck {
    pub user: UserRecord,
    pub token_revoked: bool,
    pub memberships: Vec<(Uuid, Role)>,
}

pub async fn access_check(
    pool: &PgPool,
    user_id: Uuid,
    jti: Uuid,
) -> Result<Option<AccessCheck>, sqlx::Error> {
    let sql = format!(
        "select {USER_COLUMNS},
                exists(select 1 from revoked_access_tokens where jti = $2) as token_revoked,
                coalesce((select array_agg(m.organization_id::text || ' ' || m.role)
                            from organization_members m where m.principal = 'user:' || u.id::text),
                         '{{}}') as memberships
           from users u where u.id = $1"
    );
    let Some(row) = sqlx::query(&sql)
        .bind(user_id)
        .bind(jti)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let raw: Vec<String> = row.try_get("memberships")?;
    Ok(Some(AccessCheck {
        user: user_from(&row)?,
        token_revoked: row.try_get("token_revoked")?,
        memberships: raw.iter().filter_map(|m| parse_membership(m)).collect(),
    }))
}

fn parse_membership(text: &str) -> Option<(Uuid, Role)> {
    let (organization, role) = text.split_once(' ')?;
    Some((organization.parse().ok()?, role.parse().ok()?))
}

/// The lockout's decision about one login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginAdmission {
    /// The password may be checked. The attempt already counts as a failure until
    /// [`login_succeeded`] or [`withdraw_login`] says otherwise.
    Admitted(LoginTicket),
    /// `max_failures` failures within the window; the oldest leaves it after this long.
    LockedOut { retry_after: chrono::Duration },
}

/// One admitted attempt: its row in `login_failures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginTicket {
    email: String,
    counted_at: DateTime<Utc>,
}

/// Admits a login attempt for `email` unless it has `max_failures` failures within
/// `window`, counting it at once. Check and count are one step under a per-email lock:
/// checking first and recording after the (slow) password check let every parallel guess
/// pass the check.
pub async fn admit_login(
    pool: &PgPool,
    email: &str,
    window: chrono::Duration,
    max_failures: i64,
) -> Result<LoginAdmission, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Held to the end of the transaction; the two-key form keeps it apart from the other
    // advisory locks (projectors, cycle checks).
    sqlx::query("select pg_advisory_xact_lock(hashtext('omoi-login'), hashtext($1))")
        .bind(email)
        .execute(&mut *tx)
        .await?;
    // A statement after the lock: its snapshot sees every attempt committed before.
    let row = sqlx::query(
        "with recent as (
             select count(*) as failures, min(failed_at) as oldest
               from login_failures where email = $1 and failed_at > now() - $2),
         counted as (
             insert into login_failures (email) select $1 from recent where failures < $3
             returning failed_at)
         select (select failed_at from counted) as counted_at,
                ceil(extract(epoch from recent.oldest + $2 - now()))::int8 as retry_after
           from recent",
    )
    .bind(email)
    .bind(window)
    .bind(max_failures)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let counted_at: Option<DateTime<Utc>> = row.try_get("counted_at")?;
    Ok(match counted_at {
        Some(counted_at) => LoginAdmission::Admitted(LoginTicket {
            email: email.to_string(),
            counted_at,
        }),
        None => LoginAdmission::LockedOut {
            retry_after: chrono::Duration::seconds(
                row.try_get::<Option<i64>, _>("retry_after")?.unwrap_or(0),
            ),
        },
    })
}

/// The password was right: the failures counted up to this attempt (itself included)
/// are forgotten.
pub async fn login_succeeded(pool: &PgPool, ticket: &LoginTicket) -> Result<(), sqlx::Error> {
    sqlx::query("delete from login_failures where email = $1 and failed_at <= $2")
        .bind(&ticket.email)
        .bind(ticket.counted_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// The password was never checked (the server was busy): the attempt is no failure.
pub async fn withdraw_login(pool: &PgPool, ticket: &LoginTicket) -> Result<(), sqlx::Error> {
    sqlx::query(
        "delete from login_failures where ctid = (
             select ctid from login_failures where email = $1 and failed_at = $2 limit 1)",
    )
    .bind(&ticket.email)
    .bind(ticket.counted_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Rows deleted by one [`prune_expired`] pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub login_failures: u64,
    pub refresh_tokens: u64,
    pub revoked_access_tokens: u64,
    pub orphan_agent_keys: u64,
}

impl Pruned {
    /// Whether some table may have more to delete than one pass's `limit`.
    pub fn reached(&self, limit: i64) -> bool {
        let limit = u64::try_from(limit).unwrap_or(0);
        [
            self.login_failures,
            self.refresh_tokens,
            self.revoked_access_tokens,
            self.orphan_agent_keys,
        ]
        .into_iter()
        .any(|n| n >= limit)
    }
}

/// Deletes at most `limit` rows from each credential table that nothing reads any more:
/// login failures older than the lockout `window`; refresh tokens and revoked access
/// tokens expired over an hour ago; and agent credentials over an hour old whose agent
/// was never registered (a registration writes the credential first and deletes it when
/// the registration fails, which a crash in between, or a failed delete, leaves undone). The hour is margin for clocks: an expired token is
/// refused by its signature check before these tables are read, but the expiry stored
/// was computed by an application server whose clock may differ from the database's.
pub async fn prune_expired(
    pool: &PgPool,
    window: chrono::Duration,
    limit: i64,
) -> Result<Pruned, sqlx::Error> {
    let delete = |sql: &'static str, age: chrono::Duration| async move {
        sqlx::query(sql)
            .bind(age)
            .bind(limit)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
    };
    let margin = chrono::Duration::hours(1);
    Ok(Pruned {
        login_failures: delete(
            "delete from login_failures where ctid = any(array(
                 select ctid from login_failures where failed_at < now() - $1 limit $2))",
            window,
        )
        .await?,
        refresh_tokens: delete(
            "delete from refresh_tokens where jti = any(array(
                 select jti from refresh_tokens where expires_at < now() - $1 limit $2))",
            margin,
        )
        .await?,
        revoked_access_tokens: delete(
            "delete from revoked_access_tokens where jti = any(array(
                 select jti from revoked_access_tokens where expires_at < now() - $1 limit $2))",
            margin,
        )
        .await?,
        orphan_agent_keys: delete(
            "delete from api_keys where id = any(array(
                 select k.id from api_keys k
                  where k.agent_id is not null and k.created_at < now() - $1
                    and not exists (select from events e
                                     where e.aggregate_type = 'Agent'
                                       and e.aggregate_id = k.agent_id::text
                                       and e.sequence = 1)
                  limit $2))",
            margin,
        )
        .await?,
    })
}

pub async fn store_refresh_token<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    jti: Uuid,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("insert into refresh_tokens (jti, user_id, expires_at) values ($1, $2, $3)")
        .bind(jti)
        .bind(user_id)
        .bind(expires_at)
        .execute(executor)
        .await?;
    Ok(())
}

/// What happened when a refresh token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshUse {
    /// First use: the token is now spent and may be exchanged.
    Fresh,
    /// Already exchanged once: every token of the user has now been revoked.
    Reused,
    /// Revoked by a logout (or a previous reuse).
    Revoked,
    /// Unknown to us.
    Unknown,
}

/// A refresh token to record: its id, and when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRefreshToken {
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Spends refresh token `jti` and records `replacement`, the one issued for it, in one
/// transaction holding the user's row; a second presentation revokes all of the user's
/// tokens. The lock orders an exchange and a reuse of the same token: the reuse's
/// revocation comes after the exchange's replacement is recorded, and so revokes it too
/// (without the lock, a replacement recorded just after the revocation outlived it).
pub async fn spend_refresh_token(
    pool: &PgPool,
    jti: Uuid,
    user_id: Uuid,
    replacement: NewRefreshToken,
) -> Result<RefreshUse, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // `no key update`: the user's logins (inserting refresh tokens, whose foreign key
    // takes `key share`) do not wait behind it.
    let user: Option<i32> =
        sqlx::query_scalar("select 1 from users where id = $1 for no key update")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
    if user.is_none() {
        return Ok(RefreshUse::Unknown);
    }
    let spent = sqlx::query(
        "update refresh_tokens set used_at = now()
          where jti = $1 and user_id = $2 and used_at is null and revoked_at is null",
    )
    .bind(jti)
    .bind(user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if spent == 1 {
        store_refresh_token(&mut *tx, replacement.jti, user_id, replacement.expires_at).await?;
        tx.commit().await?;
        return Ok(RefreshUse::Fresh);
    }
    // Only a token that was already exchanged signals theft; one revoked by logout is
    // merely dead.
    let used: Option<bool> = sqlx::query_scalar(
        "select used_at is not null from refresh_tokens where jti = $1 and user_id = $2",
    )
    .bind(jti)
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    let answer = match used {
        None => RefreshUse::Unknown,
        Some(false) => RefreshUse::Revoked,
        Some(true) => {
            revoke_all_tokens_in(&mut tx, user_id).await?;
            RefreshUse::Reused
        }
    };
    tx.commit().await?;
    Ok(answer)
}

/// Voids every token of the user issued until now.
pub async fn revoke_all_tokens(pool: &PgPool, user_id: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    revoke_all_tokens_in(&mut tx, user_id).await?;
    tx.commit().await
}

/// [`revoke_all_tokens`] inside the caller's transaction.
async fn revoke_all_tokens_in(
    tx: &mut sqlx::PgConnection,
    user_id: Uuid,
) -> Result<(), sqlx::Error> {
    // The clock's time, not the transaction's start (`now()`): a reuse's transaction may
    // have begun before it waited for the user's row, and a pair signed meanwhile must
    // fall before the revocation.
    sqlx::query("update users set tokens_valid_after = clock_timestamp() where id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "update refresh_tokens set revoked_at = now() where user_id = $1 and revoked_at is null",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What a logout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutOutcome {
    /// The session's tokens, as given.
    SessionEnded,
    /// The refresh token given had already been exchanged: as at a refresh, every token
    /// of the user has been revoked — its replacement, perhaps in a thief's hands, with
    /// them.
    EveryTokenRevoked,
}

/// Logout of `user_id`: revokes an access token and a refresh token of theirs (each when
/// given). A refresh token already exchanged revokes every token of the user, holding
/// their row as [`spend_refresh_token`] does, so that an exchange of the same token
/// racing the logout is revoked too, whichever commits first.
pub async fn revoke_session(
    pool: &PgPool,
    user_id: Uuid,
    access: Option<(Uuid, DateTime<Utc>)>,
    refresh: Option<Uuid>,
) -> Result<LogoutOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some((jti, expires_at)) = access {
        sqlx::query(
            "insert into revoked_access_tokens (jti, expires_at) values ($1, $2)
             on conflict do nothing",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
    }
    let mut outcome = LogoutOutcome::SessionEnded;
    if let Some(jti) = refresh {
        sqlx::query("select 1 from users where id = $1 for no key update")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
        let used: Option<bool> = sqlx::query_scalar(
            "update refresh_tokens set revoked_at = coalesce(revoked_at, now())
              where jti = $1 and user_id = $2
              returning used_at is not null",
        )
        .bind(jti)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        if used == Some(true) {
            revoke_all_tokens_in(&mut tx, user_id).await?;
            outcome = LogoutOutcome::EveryTokenRevoked;
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

/// A stored API key (without its secret).
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub prefix: String,
    pub secret_sha256: Vec<u8>,
    pub name: String,
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    pub role: Role,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Set for the credential an agent got at registration: it speaks for that agent only.
    pub agent_id: Option<Uuid>,
}

const KEY_COLUMNS: &str = "id, prefix, secret_sha256, name, organization_id, project_id, role, \
                           created_by, created_at, revoked_at, agent_id";

fn key_from(row: &sqlx::postgres::PgRow) -> Result<ApiKeyRecord, sqlx::Error> {
    let role: String = row.try_get("role")?;
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        prefix: row.try_get("prefix")?,
        secret_sha256: row.try_get("secret_sha256")?,
        name: row.try_get("name")?,
        organization_id: row.try_get("organization_id")?,
        project_id: row.try_get("project_id")?,
        role: role
            .parse()
            .map_err(|()| sqlx::Error::Decode(format!("unknown role {role:?}").into()))?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        agent_id: row.try_get("agent_id")?,
    })
}

/// Writes `key` while its creator is a member of its organization (or a super admin); false,
/// writing nothing, once they are not. The membership row is read `for share`: a removal
/// under way (which revokes every key its member created, in the transaction appending
/// `MemberRemoved`) is waited for and then seen, and a removal coming after waits for this
/// key and then revokes it too. Before, a key written while its creator was being removed
/// outlived the removal, and worked again if they were added back.
pub async fn insert_api_key(pool: &PgPool, key: &ApiKeyRecord) -> Result<bool, sqlx::Error> {
    let written = sqlx::query(
        "insert into api_keys (id, prefix, secret_sha256, name, organization_id, project_id, role,
                               created_by, agent_id)
         select $1, $2, $3, $4, $5, $6, $7, $8, $9
          where exists (select 1 from organization_members
                         where organization_id = $5 and principal = 'user:' || $8::text
                           for share)
             or exists (select 1 from users where id = $8 and is_super_admin)",
    )
    .bind(key.id)
    .bind(&key.prefix)
    .bind(&key.secret_sha256)
    .bind(&key.name)
    .bind(key.organization_id)
    .bind(key.project_id)
    .bind(key.role.as_str())
    .bind(key.created_by)
    .bind(key.agent_id)
    .execute(pool)
    .await?;
    Ok(written.rows_affected() == 1)
}

/// A key as authentication needs it: the row, and what its creator is now.
#[derive(Debug, Clone)]
pub struct KeyCheck {
    pub key: ApiKeyRecord,
    /// The creator's current role in the key's organization (from the membership index);
    /// `None` when they are no longer a member.
    pub creator_role: Option<Role>,
    /// The creator is a super admin, who acts as an owner of every organization.
    pub creator_is_super_admin: bool,
}

impl KeyCheck {
    /// The role the key acts with: its own, but at most its creator's current one (an
    /// owner's for a super admin). `None` when the creator is neither a member nor a super
    /// admin any more: the key is refused. A removal also revokes the key (the membership
    /// trigger); a demotion only lowers what the key may do, until a promotion restores it.
    pub fn effective_role(&self) -> Option<Role> {
        self.creator_role().map(|cap| self.key.role.at_most(cap))
    }

    /// The role the key's creator acts with in its organization now: an owner's for a
    /// super admin, `None` when no longer a member.
    pub fn creator_role(&self) -> Option<Role> {
        if self.creator_is_super_admin {
            Some(Role::Owner)
        } else {
            self.creator_role
        }
    }
}

/// The key with `prefix`, and its creator's current standing, in one round trip.
pub async fn api_key_by_prefix(
    pool: &PgPool,
    prefix: &str,
) -> Result<Option<KeyCheck>, sqlx::Error> {
    let sql = format!(
        "select {KEY_COLUMNS},
                (select u.is_super_admin from users u where u.id = k.created_by)
                    as creator_is_super_admin,
                (select m.role from organization_members m
                  where m.organization_id = k.organization_id
                    and m.principal = 'user:' || k.created_by::text) as creator_role
           from api_keys k where k.prefix = $1"
    );
    let Some(row) = sqlx::query(&sql).bind(prefix).fetch_optional(pool).await? else {
        return Ok(None);
    };
    let creator_role: Option<String> = row.try_get("creator_role")?;
    Ok(Some(KeyCheck {
        key: key_from(&row)?,
        creator_role: creator_role.and_then(|r| r.parse().ok()),
        creator_is_super_admin: row
            .try_get::<Option<bool>, _>("creator_is_super_admin")?
            .unwrap_or(false),
    }))
}

pub async fn api_key_by_id(pool: &PgPool, id: Uuid) -> Result<Option<ApiKeyRecord>, sqlx::Error> {
    let sql = format!("select {KEY_COLUMNS} from api_keys where id = $1");
    sqlx::query(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(key_from)
        .transpose()
}

/// The keys of the given organizations, newest first.
/// The API keys of `organizations`, newest first; with `project`, only those limited to
/// that project (what a key limited to it may see).
pub async fn api_keys_of(
    pool: &PgPool,
    organizations: &[Uuid],
    project: Option<Uuid>,
) -> Result<Vec<ApiKeyRecord>, sqlx::Error> {
    let sql = format!(
        "select {KEY_COLUMNS} from api_keys
          where organization_id = any($1) and ($2::uuid is null or project_id = $2)
          order by created_at desc"
    );
    sqlx::query(&sql)
        .bind(organizations)
        .bind(project)
        .fetch_all(pool)
        .await?
        .iter()
        .map(key_from)
        .collect()
}

/// Deletes a key nobody has seen (the credential of a registration that failed).
pub async fn delete_api_key(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("delete from api_keys where id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn revoke_api_key(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update api_keys set revoked_at = coalesce(revoked_at, now()) where id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(role: Role, creator_role: Option<Role>, super_admin: bool) -> KeyCheck {
        KeyCheck {
            key: ApiKeyRecord {
                id: Uuid::nil(),
                prefix: String::new(),
                secret_sha256: Vec::new(),
                name: String::new(),
                organization_id: Uuid::nil(),
                project_id: None,
                role,
                created_by: Uuid::nil(),
                created_at: DateTime::<Utc>::UNIX_EPOCH,
                revoked_at: None,
                agent_id: None,
            },
            creator_role,
            creator_is_super_admin: super_admin,
        }
    }

    #[test]
    fn a_key_acts_with_at_most_its_creators_current_role() {
        use Role::*;
        assert_eq!(
            check(Admin, Some(Owner), false).effective_role(),
            Some(Admin)
        );
        assert_eq!(
            check(Admin, Some(Member), false).effective_role(),
            Some(Member)
        );
        assert_eq!(
            check(AgentExecutor, Some(Viewer), false).effective_role(),
            Some(Viewer)
        );
        assert_eq!(check(Viewer, None, false).effective_role(), None, "left");
        assert_eq!(check(Owner, None, true).effective_role(), Some(Owner));
        assert_eq!(
            check(Member, Some(Viewer), true).effective_role(),
            Some(Member)
        );
    }
}
