//! Bearer tokens and roles. Tokens come from `LEDGER_TOKENS` (`role=token,...`); without it,
//! `serve` generates one per role into `DATA/tokens.json` (mode 0600) on first start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// The token table.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, Role>,
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
        Ok(Tokens { by_token })
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
                let table: HashMap<Role, String> = serde_json::from_slice(&bytes)
                    .map_err(|err| file_error(format!("unreadable token file: {err}")))?;
                let by_token = table
                    .into_iter()
                    .map(|(role, token)| (token, role))
                    .collect();
                Ok((Tokens { by_token }, path, false))
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
                Ok((Tokens { by_token }, path, true))
            }
            Err(err) => Err(file_error(err.to_string())),
        }
    }

    /// The role of a bearer token.
    pub fn role(&self, token: &str) -> Option<Role> {
        self.by_token.get(token).copied()
    }

    /// A token for `role`, if one is configured (tests and tools use it).
    pub fn token_for(&self, role: Role) -> Option<&str> {
        self.by_token
            .iter()
            .find(|(_, r)| **r == role)
            .map(|(token, _)| token.as_str())
    }
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
}
