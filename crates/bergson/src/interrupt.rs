//! Cooperative interruption (Ctrl-C): one process-wide flag that every long phase polls
//! (reading, tokenising, model loading, each batch), so a first Ctrl-C stops the work within
//! a second and leaves a resumable `<run>.part` rather than a half-written output.
//!
//! The CLI sets the flag from its signal handler ([`request`]); a library user can do the same
//! from another thread. Work checks it with [`check`], which returns [`Error::Interrupted`].

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks every running phase to stop at its next check. Returns whether it had been asked before.
pub fn request() -> bool {
    REQUESTED.swap(true, Ordering::SeqCst)
}

/// Whether an interruption was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Clears the request (for a library user who handled it and starts new work).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// `Err(Error::Interrupted)` once an interruption was requested.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
