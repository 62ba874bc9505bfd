//! keyhost: the partner-key server for AIR Kit.
//!
//! It keeps RS256 and ES256 signing keys encrypted at rest, rotates them so that every key is
//! published in the JWKS before it signs and stays published until its last token has expired,
//! serves the JWKS, and mints short-lived Partner JWTs for internal applications.
#![forbid(unsafe_code)]

pub mod admins;
pub mod airkit;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod canonical;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod email;
pub mod emulator;
pub mod files;
pub mod fuzzing;
pub mod http;
pub mod http_client;
pub mod integrity;
pub mod issuance;
pub mod jwks;
pub mod keys;
pub mod kyc;
pub mod ledger;
pub mod lifecycle;
pub mod live;
pub mod log_limit;
pub mod metrics;
pub mod mint;
pub mod partner_jwt;
pub mod privacy;
pub mod public_jwks;
pub mod replicas;
pub mod scope;
pub mod sightings;
pub mod signer;
pub mod startup;
pub mod store;
pub mod telemetry;
