//! Herald's pure core: the Pryv.io data model and its rules.
//!
//! Everything here is deterministic and free of I/O (no clock, no disk, no network): callers pass
//! `now` in. That keeps the rules — who may do what, how an `events.get` query reads, what a
//! webhook does on a change or a failed POST — unit-testable in isolation, and lets the storage,
//! API and delivery layers share one definition of each rule.

pub mod access;
pub mod access_request;
pub mod change;
pub mod error;
pub mod event;
pub mod id;
pub mod params;
pub mod partition;
pub mod query;
pub mod scope;
pub mod stream;
pub mod throttle;
pub mod user;
pub mod webhook;
pub mod webhook_machine;

#[cfg(test)]
mod properties;

pub use error::{ApiError, ErrorId};

/// Pryv timestamps are Unix seconds as a float, with millisecond decimals.
pub type Timestamp = f64;

/// Round a timestamp to milliseconds, as Pryv does, so values survive JSON round trips exactly.
pub fn round_ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}
