//! Who may connect to the embedded cluster, and whether its server still runs.
//!
//! The superuser's password is generated once per cluster and kept inside the data
//! directory (`omoi-password`, 0600, owned like the rest of it): it travels and goes with
//! the data it protects, and a data directory is already private to its owner.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{chown, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::distributions::{Alphanumeric, DistString};

/// The file, inside the data directory, that holds the superuser's password.
pub const PASSWORD_FILE: &str = "omoi-password";

/// A password's length: letters and digits only, so it needs no escaping in a URL or in
/// SQL.
const PASSWORD_LENGTH: usize = 32;

/// The uid and gid that own the data directory's files, when we are root.
pub type Owner = Option<(u32, u32)>;

pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), PASSWORD_LENGTH)
}

pub fn password_file(data_dir: &Path) -> PathBuf {
    data_dir.join(PASSWORD_FILE)
}

pub fn read_password(data_dir: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(password_file(data_dir))?
        .trim()
        .to_string())
}

/// Writes the password file (readable by its owner only from its creation on) through a
/// temporary file, so that it either holds the whole password or does not exist.
pub fn write_password(data_dir: &Path, password: &str, owner: Owner) -> io::Result<()> {
    replace_file(&password_file(data_dir), password.as_bytes(), owner)
}

/// Makes every rule of `pg_hba.conf` that trusts a connection ask for the password
/// (SCRAM) instead; other rules are kept as they are.
pub fn require_passwords(hba: &Path, owner: Owner) -> io::Result<()> {
    let rules = fs::read_to_string(hba)?;
    let mut rewritten: String = rules
        .lines()
        .map(require_password)
        .collect::<Vec<_>>()
        .join("\n");
    rewritten.push('\n');
    replace_file(hba, rewritten.as_bytes(), owner)
}

/// One line of `pg_hba.conf`: its method (the last field before any `name=value`
/// option) `trust` becomes `scram-sha-256`.
fn require_password(line: &str) -> String {
    let rule = line.trim_start();
    if rule.is_empty() || rule.starts_with('#') {
        return line.to_string();
    }
    let mut fields: Vec<&str> = rule.split_whitespace().collect();
    if let Some(method) = fields.iter_mut().rev().find(|field| !field.contains('=')) {
        if *method == "trust" {
            *method = "scram-sha-256";
        }
    }
    fields.join(" ")
}

fn replace_file(path: &Path, contents: &[u8], owner: Owner) -> io::Result<()> {
    let temporary = path.with_extension("omoi-new");
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    if let Some((uid, gid)) = owner {
        chown(&temporary, Some(uid), Some(gid))?;
    }
    fs::rename(&temporary, path)
}

/// The server's process id from `postmaster.pid`, if the file is there.
pub fn server_pid(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether process `pid` lives and is a server of `data_dir` (the postmaster works in its
/// data directory; a pid file left by a crash may name a process that is now another).
pub fn serves(pid: u32, data_dir: &Path) -> bool {
    let process = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(process.join("stat")) else {
        return false;
    };
    // The state follows the command name in parentheses; a zombie has ended.
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    if zombie {
        return false;
    }
    match (
        fs::read_link(process.join("cwd")),
        fs::canonicalize(data_dir),
    ) {
        (Ok(cwd), Ok(data_dir)) => cwd == data_dir,
        // Not allowed to look (another user's process): assume it is the server.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusting_rules_ask_for_the_password_and_comments_stay() {
        let rules = "# TYPE DATABASE USER ADDRESS METHOD\n\
                     local   all   all                  trust\n\
                     host    all   all   127.0.0.1/32   trust\n\
                     host    all   all   ::1/128        md5\n\
                     host    all   all   10.0.0.0/8     trust  clientcert=verify-ca";
        let rewritten: Vec<String> = rules.lines().map(require_password).collect();
        assert_eq!(
            rewritten,
            [
                "# TYPE DATABASE USER ADDRESS METHOD",
                "local all all scram-sha-256",
                "host all all 127.0.0.1/32 scram-sha-256",
                "host all all ::1/128 md5",
                "host all all 10.0.0.0/8 scram-sha-256 clientcert=verify-ca",
            ]
        );
    }

    #[test]
    fn a_generated_password_needs_no_escaping() {
        let password = generate_password();
        assert_eq!(password.len(), PASSWORD_LENGTH);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(password, generate_password());
    }
}
