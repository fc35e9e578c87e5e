//! `BenchError` and its constructors.

use std::io;

use crate::gen;
use crate::local::LocalError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("generating the benchmark data: {0}")]
    Gen(#[from] gen::GenError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("wrong answer: {0}")]
    Check(String),
    #[error("{0}")]
    Failed(String),
}

pub(super) fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

pub(super) fn failed(msg: impl Into<String>) -> BenchError {
    BenchError::Failed(msg.into())
}
