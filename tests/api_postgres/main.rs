//! keyhost's API specification on PostgreSQL: the tests of `tests/api`, each server on a schema
//! of its own in the test database (see `tests/api/pg.rs`). Tests that only mean something on
//! SQLite (its file, its lock, its migrations) say so and end early.

#[path = "../api/activation.rs"]
mod activation;
#[path = "../api/admin.rs"]
mod admin;
#[path = "../api/admins.rs"]
mod admins;
#[path = "../api/airkit.rs"]
mod airkit;
#[path = "../api/alerts.rs"]
mod alerts;
#[path = "../api/audit.rs"]
mod audit;
#[path = "../api/backup.rs"]
mod backup;
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
#[path = "../api/privacy.rs"]
mod privacy;
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
#[path = "../api/verifiers.rs"]
mod verifiers;
#[path = "../api/webhooks.rs"]
mod webhooks;

/// The engine of this binary's servers.
pub const ENGINE: helpers::Engine = helpers::Engine::Postgres;

/// Every module of `tests/api` runs here too: one added there and forgotten here would pass on
/// SQLite alone without anyone noticing.
#[test]
fn every_api_test_module_runs_on_postgresql_too() {
    let here = include_str!("main.rs");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let module = if path.is_dir() {
            format!("\"../api/{name}/mod.rs\"")
        } else if name.ends_with(".rs") && name != "main.rs" {
            format!("\"../api/{name}\"")
        } else {
            continue;
        };
        assert!(
            here.contains(&module),
            "tests/api/{name} is not included here"
        );
    }
}
