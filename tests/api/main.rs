//! keyhost's API specification, as tests: each starts the real server on random loopback ports
//! with a temporary store and a manual clock, and talks HTTP to it.

mod activation;
mod admin;
mod admins;
mod airkit;
mod alerts;
mod audit;
mod backup;
mod cli;
mod clock;
mod crash;
mod docs;
mod doctor;
mod emulator;
mod errors;
mod helpers;
mod hostile;
mod import;
mod integrity;
mod issuance;
mod jwks;
mod lifecycle;
mod openapi;
mod pg;
mod postgres;
mod privacy;
mod process;
mod replicas;
mod storage;
mod tls;
mod tokens;
mod verifiers;
mod webhooks;

/// The engine of this binary's servers (`tests/api_postgres` runs the same tests on PostgreSQL).
pub const ENGINE: helpers::Engine = helpers::Engine::Sqlite;
