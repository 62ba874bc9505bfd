//! keyhost's API specification on PostgreSQL: the tests of `tests/api`, each server on a schema
//! of its own in the test database (see `tests/api/pg.rs`). Tests that only mean something on
//! SQLite (its file, its lock, its migrations) say so and end early.

#[path = "../api/admin.rs"]
mod admin;
#[path = "../api/airkit.rs"]
mod airkit;
#[path = "../api/alerts.rs"]
mod alerts;
#[path = "../api/cli.rs"]
mod cli;
#[path = "../api/clock.rs"]
mod clock;
#[path = "../api/crash.rs"]
mod crash;
#[path = "../api/docs.rs"]
mod docs;
#[path = "../api/doctor.rs"]
mod doctor;
#[path = "../api/emulator/mod.rs"]
mod emulator;
#[path = "../api/errors.rs"]
mod errors;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/hostile.rs"]
mod hostile;
#[path = "../api/import.rs"]
mod import;
#[path = "../api/integrity.rs"]
mod integrity;
#[path = "../api/issuance.rs"]
mod issuance;
#[path = "../api/jwks.rs"]
mod jwks;
#[path = "../api/lifecycle.rs"]
mod lifecycle;
#[path = "../api/openapi.rs"]
mod openapi;
#[path = "../api/pg.rs"]
mod pg;
#[path = "../api/postgres.rs"]
mod postgres;
#[path = "../api/process.rs"]
mod process;
#[path = "../api/replicas.rs"]
mod replicas;
#[path = "../api/storage.rs"]
mod storage;
#[path = "../api/tls.rs"]
mod tls;
#[path = "../api/tokens.rs"]
mod tokens;
#[path = "../api/webhooks.rs"]
mod webhooks;

/// The engine of this binary's servers.
pub const ENGINE: helpers::Engine = helpers::Engine::Postgres;
