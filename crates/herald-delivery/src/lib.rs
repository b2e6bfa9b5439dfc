//! The webhook delivery engine.
//!
//! - [`dispatcher`]: one task that owns every webhook's [`Machine`](herald_model::webhook_machine::Machine),
//!   routes changes from the bus to the webhooks they concern, keeps one timer heap for all of
//!   them, and carries out what the machines decide. The delivery policy itself is the pure
//!   state machine in `herald_model::webhook_machine`.
//! - [`ownership`]: in a cluster, which partitions of the webhooks this node delivers, each
//!   held with a lease and delivered by a dispatcher of its own.
//! - [`sender`]: the outbound HTTP POST (shared client, timeouts, signatures, address checks).
//! - [`persister`]: saves what the machines report, in order, in grouped transactions.

pub mod dispatcher;
pub mod log_follower;
pub mod ownership;
pub mod persister;
pub mod sender;

pub use dispatcher::{start, DispatcherHandle, DispatcherSettings, Ownership};
pub use sender::{Sender, SenderSettings};
