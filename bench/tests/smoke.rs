//! The smoke test of `make bench`: a quick run against the debug binaries `cargo test` has
//! already built (no release compile in CI), on free ports and the run's own databases and
//! vhosts, so it never meets a `make run` stack or another test. It checks that every scenario
//! ran and that the report, the raw results and the plots were written — and nothing about the
//! figures: performance is measured by `make bench`, never asserted in tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::{path::Path, process::Command};

use shop_bench::stack::built_services;

#[test]
fn a_quick_run_on_the_debug_build_writes_the_report_the_results_and_the_plots() {
    let bench = Path::new(env!("CARGO_BIN_EXE_shop-bench"));
    let bin_dir = built_services(bench).unwrap_or_else(|missing| panic!("{missing}"));
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(bench)
        .args(["run", "--quick", "--bin-dir"])
        .arg(bin_dir)
        .arg("--out")
        .arg(out.path())
        .arg("--work-dir")
        .arg(out.path().join("work"))
        .status()
        .unwrap();
    assert!(status.success(), "shop-bench run --quick failed: {status}");

    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for section in [
        "## Targets",
        "## 1. Proxy overhead",
        "## 2. Product read",
        "## 3. Orders end to end",
        "## 4. Event pipeline",
        "## 5. Footprint",
        "## 7. Mail on a store with history",
    ] {
        assert!(
            report.contains(section),
            "the report has no '{section}':\n{report}"
        );
    }
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("results/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(results["failures"], serde_json::json!([]), "{results:#}");
    assert_eq!(results["footprint"].as_array().unwrap().len(), 7);
    // The authenticated read went through both JWT checks: every answer a 200.
    let me = &results["product"]["authenticated"]["saturation"]["measured"];
    assert!(me["ok"].as_u64().unwrap() > 0, "{me:#}");
    assert_eq!(me["refused"], 0, "{me:#}");
    // The stack was watched going quiet after the load, window by window.
    let idle = &results["idle_after_load"];
    assert!(
        !idle["windows_percent"].as_array().unwrap().is_empty(),
        "{idle:#}"
    );
    for plot in [
        "proxy-latency.svg",
        "throughput.svg",
        "product-latency.svg",
        "orders-latency.svg",
        "events-latency.svg",
        "footprint-rss.svg",
        "footprint-ready.svg",
    ] {
        let svg = std::fs::read_to_string(out.path().join("results").join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("</svg>"),
            "{plot} is not an SVG"
        );
    }
}
