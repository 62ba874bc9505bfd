//! The AIR Kit emulator against a real keyhost: tokens minted by keyhost's `POST /v1/tokens` (or
//! signed here with a key imported into keyhost) are verified by the emulator through keyhost's
//! published JWKS, and every answer is checked against AIR Kit's documented shapes and wording.
//! One file per concern; the harness they share is in `harness.rs`.

mod auth;
mod faults;
mod harness;
mod issuance;
mod jwks;
mod requests;
mod robustness;
