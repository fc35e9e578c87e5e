//! Errors and results: `GenError`, the run `Summary` and `expected_path`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors carry paths and counts only, never row values.
#[derive(Debug)]
pub enum GenError {
    Invalid(String),
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Csv {
        action: &'static str,
        path: PathBuf,
        source: csv::Error,
    },
}

impl fmt::Display for GenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenError::Invalid(msg) => f.write_str(msg),
            GenError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            GenError::Csv {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for GenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GenError::Invalid(_) => None,
            GenError::Io { source, .. } => Some(source),
            GenError::Csv { source, .. } => Some(source),
        }
    }
}

pub(super) fn invalid<T>(msg: impl Into<String>) -> Result<T, GenError> {
    Err(GenError::Invalid(msg.into()))
}

pub(super) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> GenError + 'a {
    move |source| GenError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn csv_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(csv::Error) -> GenError + 'a {
    move |source| GenError::Csv {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What one run wrote (counts only).
#[derive(Debug, Clone)]
pub struct Summary {
    pub rows: u64,
    pub new: u64,
    pub changed: u64,
    pub removed: u64,
    pub malformed: u64,
    pub skipped_prev: u64,
    pub columns: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub expected: PathBuf,
    pub elapsed: Duration,
}

/// `PATH` -> `PATH.expected.json`.
pub fn expected_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".expected.json");
    PathBuf::from(s)
}
