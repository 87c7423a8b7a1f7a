//! How a command ends when it fails: one error enum for every subcommand (`serve`,
//! `dev`, `state`, `state watch`), each variant with its exit status, as `just` does
//! it. `exit_code` is the only place the numbers are decided; `cli::main_with_args`
//! prints the failure once, as `WHO: MESSAGE` on stderr, and exits with its status.
//!
//! The numbers are an interface (scripts branch on them, the README lists them):
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | a runtime failure: a listener or the state folder cannot be used, `dev` cannot prepare its folder, the daemon answered `state` with another error, `watch` cannot run its command |
//! | 2 | usage or configuration |
//! | 3 | `state`: not found (404) |
//! | 4 | `state`: version conflict (409) |
//! | 5 | `state`: the daemon is unreachable (no socket, refused, timed out) |
//! | 6 | `state`: access denied (401, 403) |

use super::client::ClientError;
use super::config::ConfigError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// An invalid `serve` configuration, found before anything is bound or written.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener cannot be bound (the message names the address).
    #[error("{0}")]
    Bind(String),
    /// The state folder cannot be used.
    #[error("cannot load the state cache: {0}")]
    Store(String),
    /// Another start-up step failed (threads, signal handling).
    #[error("cannot start: {0}")]
    Start(String),
    /// Any other runtime failure, already worded for the user.
    #[error("{0}")]
    Failed(String),
    /// `state`: the daemon's socket does not answer.
    #[error("daemon unreachable: {0}")]
    Unreachable(#[from] ClientError),
    /// `state`: the daemon answered with an error status.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
}

impl CliError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => 2,
            CliError::Bind(_) | CliError::Store(_) | CliError::Start(_) | CliError::Failed(_) => 1,
            CliError::Unreachable(_) => 5,
            CliError::Refused { status, .. } => match status {
                404 => 3,
                409 => 4,
                401 | 403 => 6,
                _ => 1,
            },
        }
    }

    /// This failure, reported by `who` (`plexd-nodeapi`, `plexd-nodeapi state`, …).
    pub fn by(self, who: &'static str) -> Failure {
        Failure { who, error: self }
    }
}

/// A failed command: who reports it (the program and subcommand) and why.
#[derive(Debug)]
pub struct Failure {
    pub who: &'static str,
    pub error: CliError,
}

impl Failure {
    /// Prints `WHO: MESSAGE` on stderr and returns the exit status.
    pub fn report(&self) -> i32 {
        eprintln!("{}: {}", self.who, self.error);
        self.error.exit_code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_scripts_rely_on() {
        let refused = |status| CliError::Refused {
            status,
            message: String::new(),
        };
        assert_eq!(CliError::Usage(String::new()).exit_code(), 2);
        assert_eq!(
            CliError::Config(ConfigError::new("--x", "y")).exit_code(),
            2
        );
        assert_eq!(CliError::Bind(String::new()).exit_code(), 1);
        assert_eq!(refused(404).exit_code(), 3);
        assert_eq!(refused(409).exit_code(), 4);
        assert_eq!(CliError::Unreachable(ClientError::Malformed).exit_code(), 5);
        assert_eq!(refused(401).exit_code(), 6);
        assert_eq!(refused(403).exit_code(), 6);
        assert_eq!(refused(503).exit_code(), 1);
    }
}
