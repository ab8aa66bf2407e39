//! The crate's integration tests, one module per file beside this one, linked into one test
//! binary: each test binary links the whole dependency graph again, so one per file cost
//! gigabytes of disk and minutes of linking on a two-core CI machine. `contracts.rs` stays its
//! own binary (`make contracts SERVICE=…` runs it alone), and so does each file whose tests
//! need the process to themselves (see its `[[test]]` in Cargo.toml).

mod delivery;
mod service;
mod support;
mod topology;
