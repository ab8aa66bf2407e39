//! `make chaos`'s short scenario, in `make test` so the suite cannot rot: order-service is
//! killed (-9) under a few seconds of load at a low rate and started again, and every
//! invariant of `docs/chaos.md` must hold afterwards. It runs the debug binaries `cargo test`
//! has already built, on free ports and the run's own databases, vhost and key prefixes (like
//! `smoke.rs`), and fails — with the report's evidence — when an invariant fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::{path::Path, process::Command};

use shop_bench::stack::built_services;

#[test]
fn order_service_killed_under_load_every_invariant_holds_afterwards() {
    let bench = Path::new(env!("CARGO_BIN_EXE_shop-bench"));
    let bin_dir = built_services(bench).unwrap_or_else(|missing| panic!("{missing}"));
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(bench)
        .args(["chaos", "--quick", "--only", "kill-order", "--bin-dir"])
        .arg(bin_dir)
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap_or_default();
    assert!(
        status.success(),
        "shop-bench chaos --quick --only kill-order failed ({status}):\n{report}"
    );

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{results:#}");
    let row = &rows[0];
    assert_eq!(row["scenario"], "kill-order");
    // The fault really struck: the service was started again, and the load saw it.
    assert!(row["restart_ready_s"].is_f64(), "{row:#}");
    assert!(row["orders"]["ok"].as_u64().unwrap() > 0, "{row:#}");
    let invariants = row["invariants"].as_array().unwrap();
    assert_eq!(invariants.len(), 8, "{row:#}");
    for invariant in invariants {
        assert_eq!(invariant["held"], true, "{invariant:#}\n{report}");
    }
}
