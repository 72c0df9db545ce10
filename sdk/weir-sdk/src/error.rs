//! Plugin errors: every kind maps to the WIT `plugin-error` variant.

use crate::bindings::PluginError;

/// What a plugin returns from `?`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A plugin error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// An event or row cannot be processed; the host sends it to the dead-letter output.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The function is not implemented by this plugin.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Error::InvalidConfig(message.into())
    }
    /// An input error.
    pub fn input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }
    /// An unsupported operation.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::Unsupported(message.into())
    }
    /// Any other error.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// Prefixes an input error with the event or row it concerns (`what` is "event" or
    /// "row").
    pub(crate) fn at(self, what: &str, i: usize) -> Self {
        match self {
            Error::InvalidInput(m) => Error::InvalidInput(format!("{what} {i}: {m}")),
            other => other,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::InvalidConfig(e.to_string())
    }
}

impl From<String> for Error {
    fn from(m: String) -> Self {
        Error::Internal(m)
    }
}

impl From<&str> for Error {
    fn from(m: &str) -> Self {
        Error::Internal(m.to_string())
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidConfig(m) => PluginError::InvalidConfig(m),
            Error::InvalidInput(m) => PluginError::InvalidInput(m),
            Error::Unsupported(m) => PluginError::Unsupported(m),
            Error::Internal(m) => PluginError::Internal(m),
        }
    }
}
