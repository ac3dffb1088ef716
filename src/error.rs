//! One error type for the engine. Every user-reachable failure (bad shapes, bad dims, bad files)
//! is an `Error` that names the inputs involved, never a panic.

use thiserror::Error as ThisError;

#[derive(Debug, ThisError)]
pub enum Error {
    /// Shapes that do not fit the op; `detail` names the shapes involved.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    /// A dimension index or a parameter out of range.
    #[error("{op}: {detail}")]
    Invalid { op: &'static str, detail: String },
    /// Tensors on different devices, or an op the device cannot run.
    #[error("{op}: {detail}")]
    Device { op: &'static str, detail: String },
    /// A data or weight file that is missing, truncated or malformed.
    #[error("{path}: {detail}")]
    Data { path: String, detail: String },
    /// A run directory locked by another process (exit code [`EXIT_BUSY`]).
    #[error("{dir}: {detail}")]
    Busy { dir: String, detail: String },
    /// The command ran to its end and wrote its results, but some candidates or proxies failed
    /// (exit code [`EXIT_PARTIAL`]); `summary` is one line.
    #[error("{summary}")]
    PartlyFailed { summary: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Exit codes (docs/RUNS.md): 0 success; 1 the command failed (bad input, bad setting, I/O);
/// 2 the command line could not be parsed (clap's usage errors); 3 the run finished and wrote its
/// results but some candidates or proxies errored; 4 the run directory is in use by another
/// process.
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_PARTIAL: i32 = 3;
pub const EXIT_BUSY: i32 = 4;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid { op, detail: detail.into() }
    }
    pub fn data(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Data { path: path.into(), detail: detail.into() }
    }
    /// The process exit code this error ends a command with.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Busy { .. } => EXIT_BUSY,
            Error::PartlyFailed { .. } => EXIT_PARTIAL,
            _ => EXIT_FAILED,
        }
    }
}

/// `bail!(shape "op", "...")`-style helpers keep error sites to one line.
#[macro_export]
macro_rules! shape_err {
    ($op:expr, $($fmt:tt)*) => { return Err($crate::Error::shape($op, format!($($fmt)*))) };
}
#[macro_export]
macro_rules! invalid_err {
    ($op:expr, $($fmt:tt)*) => { return Err($crate::Error::invalid($op, format!($($fmt)*))) };
}

/// `map_err` adapter naming what was being done: `.map_err(io_err(format!("reading {}", p.display())))`.
pub fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
