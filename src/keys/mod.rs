//! Signing keys: their algorithms, states and lifecycle.
//!
//! - [`types`] the key record, its algorithm, state and origin (plain data, below the store).
//! - [`planner`] decides, as a pure function of (now, keys, policy), which transitions are due.
//! - [`material`] generates, parses and imports key pairs (aws-lc-rs only for private-key work).
//! - [`master`] seals private keys at rest under the master key.
//! - [`service`] applies transitions and admin actions to the store, one transaction each.

pub mod jwk;
pub mod master;
pub mod material;
pub mod planner;
pub mod service;
pub mod types;
pub mod view;

pub use jwk::PublicJwk;
pub use planner::{Plan, Policy, Transition};
pub use service::{KeyError, KeyService};
pub use types::{Alg, KeyRecord, KeyState, Origin};
pub use view::KeyView;
