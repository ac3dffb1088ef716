//! Printing that survives a closed pipe. `println!` panics when stdout is a pipe whose reader has
//! gone (`kdscout models | head -1`); these macros drop the text instead, remember that the
//! stream is closed, and let the command go on: a printer simply stops showing, and a long run
//! keeps running and writing its files.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

fn write_to(mut w: impl Write, closed: &AtomicBool, args: fmt::Arguments) {
    if closed.load(Ordering::Relaxed) {
        return;
    }
    // Any failure means nobody can read this stream any more (EPIPE, a full disk behind a
    // redirect): stop writing to it rather than fail the run.
    if w.write_fmt(args).is_err() {
        closed.store(true, Ordering::Relaxed);
    }
}

#[doc(hidden)]
pub fn stdout_fmt(args: fmt::Arguments) {
    write_to(std::io::stdout().lock(), &STDOUT_CLOSED, args);
}

#[doc(hidden)]
pub fn stderr_fmt(args: fmt::Arguments) {
    write_to(std::io::stderr().lock(), &STDERR_CLOSED, args);
}

/// Whether stdout was found closed (a printer may stop early).
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `println!` that never panics (see the module docs).
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::output::stdout_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::output::stdout_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that never panics.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::stdout_fmt(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::output::stderr_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
