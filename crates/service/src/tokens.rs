//! Bearer tokens and roles. Tokens come from `LEDGER_TOKENS` (`role=token,...`); without it,
//! `serve` generates one per role into `DATA/tokens.json` (mode 0600) on first start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// What a token may do. Admin may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Executor,
    Billing,
    Support,
    Finance,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Executor,
        Role::Billing,
        Role::Support,
        Role::Finance,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Executor => "executor",
            Role::Billing => "billing",
            Role::Support => "support",
            Role::Finance => "finance",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

/// Why tokens could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("LEDGER_TOKENS: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// The token table. A presented token is hashed and compared with every configured token's
/// digest in constant time: a map lookup or an early-exit comparison would let a caller time
/// its way to a valid token byte by byte, and comparing digests hides the tokens' lengths.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    digest: [u8; 32],
    role: Role,
    token: String,
}

/// Never prints a token: a `{:?}` in a log line must not leak one.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|entry| entry.role))
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Tokens shorter than this are refused: they could be guessed.
const TOKEN_LEN_MIN: usize = 16;

impl Tokens {
    /// Parses `role=token,role=token`.
    pub fn parse(spec: &str) -> Result<Tokens, TokenError> {
        let mut by_token = HashMap::new();
        for entry in spec
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let (role, token) = entry
                .split_once('=')
                .ok_or_else(|| TokenError::Config(format!("{entry:?} is not role=token")))?;
            let role = Role::parse(role.trim()).ok_or_else(|| {
                TokenError::Config(format!(
                    "unknown role {role:?}: expected executor, billing, support, finance or admin"
                ))
            })?;
            let token = token.trim();
            if token.len() < TOKEN_LEN_MIN {
                return Err(TokenError::Config(format!(
                    "the {} token is shorter than {TOKEN_LEN_MIN} characters",
                    role.as_str()
                )));
            }
            if by_token.insert(token.to_string(), role).is_some() {
                return Err(TokenError::Config("the same token is given twice".into()));
            }
        }
        if by_token.is_empty() {
            return Err(TokenError::Config("no tokens given".into()));
        }
        Ok(Tokens::from_map(by_token))
    }

    fn from_map(by_token: HashMap<String, Role>) -> Tokens {
        let entries = by_token
            .into_iter()
            .map(|(token, role)| Entry {
                digest: digest(&token),
                role,
                token,
            })
            .collect();
        Tokens { entries }
    }

    /// Loads `DATA/tokens.json`, creating it with one fresh token per role if it is missing.
    /// Returns the tokens and whether the file was created.
    pub fn load_or_generate(data_dir: &Path) -> Result<(Tokens, PathBuf, bool), TokenError> {
        let path = data_dir.join("tokens.json");
        let file_error = |message: String| TokenError::File {
            path: path.clone(),
            message,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                refuse_shared(&path).map_err(file_error)?;
                let table: HashMap<Role, String> = serde_json::from_slice(&bytes)
                    .map_err(|err| file_error(format!("unreadable token file: {err}")))?;
                let by_token = table
                    .into_iter()
                    .map(|(role, token)| (token, role))
                    .collect();
                Ok((Tokens::from_map(by_token), path, false))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let table: HashMap<Role, String> = Role::ALL
                    .into_iter()
                    .map(|role| {
                        (
                            role,
                            format!("{}_{}", role.as_str(), uuid::Uuid::new_v4().simple()),
                        )
                    })
                    .collect();
                let text = serde_json::to_string_pretty(&table)
                    .map_err(|err| file_error(err.to_string()))?;
                write_private(&path, text.as_bytes()).map_err(|err| file_error(err.to_string()))?;
                let by_token = table
                    .into_iter()
                    .map(|(role, token)| (token, role))
                    .collect();
                Ok((Tokens::from_map(by_token), path, true))
            }
            Err(err) => Err(file_error(err.to_string())),
        }
    }

    /// The role of a bearer token. Every configured token is compared, whichever matches:
    /// the time taken depends on the number of tokens only.
    pub fn role(&self, token: &str) -> Option<Role> {
        let presented = digest(token);
        let mut found = Choice::from(0);
        let mut index = 0u32;
        for (i, entry) in self.entries.iter().enumerate() {
            #[cfg(test)]
            tests::DIGESTS_COMPARED.with(|count| count.set(count.get() + 1));
            let hit = entry.digest.ct_eq(&presented);
            // Parsing refuses a token given twice, so at most one entry hits.
            index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), hit);
            found |= hit;
        }
        if bool::from(found) {
            self.entries.get(index as usize).map(|entry| entry.role)
        } else {
            None
        }
    }

    /// A token for `role`, if one is configured (tests and tools use it).
    pub fn token_for(&self, role: Role) -> Option<&str> {
        self.entries
            .iter()
            .find(|entry| entry.role == role)
            .map(|entry| entry.token.as_str())
    }
}

/// A token file others can read may already have leaked: refuse to start on it rather than
/// tighten it quietly, as ssh does with a private key, so the operator rotates the tokens.
fn refuse_shared(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|err| err.to_string())?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "the token file has mode {:04o}: others may have read the tokens; generate new \
                 ones (delete the file) or, if it never left this machine, run chmod 600 on it",
                mode & 0o7777
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes a file readable by its owner only, created that way so it is never briefly open.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_roles() {
        let tokens =
            Tokens::parse("executor=exec-token-0123456789, admin=admin-token-0123456789").unwrap();
        assert_eq!(tokens.role("exec-token-0123456789"), Some(Role::Executor));
        assert_eq!(tokens.role("admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(tokens.role("nope"), None);
        assert!(Tokens::parse("boss=abcdefghijklmnopq").is_err());
        assert!(Tokens::parse("executor=short").is_err());
        assert!(Tokens::parse("executor").is_err());
        assert!(Tokens::parse("").is_err());
    }

    #[test]
    fn generated_tokens_are_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (tokens, path, created) = Tokens::load_or_generate(dir.path()).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, _, created) = Tokens::load_or_generate(dir.path()).unwrap();
        assert!(!created);
        for role in Role::ALL {
            let token = tokens.token_for(role).unwrap();
            assert_eq!(again.role(token), Some(role));
        }
    }

    /// A table with `<role>-token-0123456789` for each role.
    fn one_token_per_role() -> Tokens {
        let spec = Role::ALL
            .iter()
            .map(|role| format!("{}={}-token-0123456789", role.as_str(), role.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        Tokens::parse(&spec).unwrap()
    }

    #[test]
    fn every_configured_token_finds_its_role_and_near_misses_find_none() {
        let tokens = one_token_per_role();
        for role in Role::ALL {
            let token = format!("{}-token-0123456789", role.as_str());
            assert_eq!(tokens.role(&token), Some(role), "{token}");
            // A prefix, an extension, one changed byte and other cases all miss: only the
            // whole token matches, whatever its length.
            assert_eq!(tokens.role(&token[..token.len() - 1]), None);
            assert_eq!(tokens.role(&format!("{token}0")), None);
            assert_eq!(tokens.role(&token.replace('9', "8")), None);
            assert_eq!(tokens.role(&token.to_uppercase()), None);
        }
        assert_eq!(tokens.role(""), None);
        assert_eq!(Tokens::default().role("anything-at-all-0123"), None);
    }

    thread_local! {
        /// Digests compared by [`Tokens::role`] on this thread.
        pub(super) static DIGESTS_COMPARED: std::cell::Cell<usize> =
            const { std::cell::Cell::new(0) };
    }

    /// The lookup went through a map keyed by token and a string compare, which stops at the
    /// first differing byte: a caller could time its way to a token. Time is not measured
    /// here (a timing test on a shared machine would be noise); what makes it constant is:
    /// every digest is compared, wherever the match is, and digests are of fixed length.
    #[test]
    fn regression_token_lookup_stopped_at_the_first_differing_byte() {
        let tokens = one_token_per_role();
        let mut presented: Vec<String> = Role::ALL
            .iter()
            .map(|role| format!("{}-token-0123456789", role.as_str()))
            .collect();
        presented.extend(["".into(), "x".into(), "admin-token-012345678".into()]);
        for token in &presented {
            let before = DIGESTS_COMPARED.with(std::cell::Cell::get);
            tokens.role(token);
            let compared = DIGESTS_COMPARED.with(std::cell::Cell::get) - before;
            assert_eq!(compared, Role::ALL.len(), "digests compared for {token:?}");
        }
        assert!(tokens
            .entries
            .iter()
            .all(|entry| entry.digest.len() == 32 && entry.digest != [0; 32]));
    }

    #[test]
    fn regression_a_debug_print_of_the_token_table_showed_every_token() {
        let tokens = Tokens::parse("admin=secret-admin-token-0123456789").unwrap();
        let printed = format!("{tokens:?}");
        assert!(!printed.contains("secret-admin-token"), "{printed}");
        assert!(printed.contains("Admin"), "{printed}");
    }

    #[cfg(unix)]
    #[test]
    fn regression_a_token_file_others_could_read_was_served() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_, path, _) = Tokens::load_or_generate(dir.path()).unwrap();
        let before = std::fs::read(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Tokens::load_or_generate(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "refusing changes nothing");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Tokens::load_or_generate(dir.path()).is_ok());
    }
}
