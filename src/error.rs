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
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

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
