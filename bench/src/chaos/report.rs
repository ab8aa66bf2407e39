//! `report.md` and `report.json`: one row per scenario, each invariant held or not, and the
//! evidence (ids) for every violation.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;
use serde::Serialize;

use super::{
    Options,
    checks::{Invariant, NAMES},
    faults::{Fault, Scenario, Timing},
    load::by_status,
};
use crate::loadgen::Measured;

/// What one kind of request got.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Requests {
    pub offered: u64,
    pub ok: u64,
    pub refused_by_status: BTreeMap<u16, u64>,
    /// No answer (connection refused or reset, timeout) or never sent (the generator was still
    /// behind its schedule at the end).
    pub no_answer: u64,
}

impl Requests {
    pub fn of(measured: &Measured) -> Self {
        Self {
            offered: measured.ok + measured.refused + measured.errors + measured.unsent,
            ok: measured.ok,
            refused_by_status: measured.refused_by_status.clone(),
            no_answer: measured.errors + measured.unsent,
        }
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub what: &'static str,
    pub fault: Fault,
    /// `POST /api/v1/orders`; `ok` = accepted (202).
    pub orders: Requests,
    /// `GET /api/v1/products/{id}`.
    pub reads: Requests,
    /// Seconds from the start of the load.
    pub struck_at_s: f64,
    pub healed_at_s: f64,
    pub restart_ready_s: Option<f64>,
    /// Healed → the end of the first order placed after it.
    pub recover_s: Option<f64>,
    /// The later of the fault healing and the load ending → every invariant held; `None`: not
    /// within `settle_within_s`.
    pub settle_s: Option<f64>,
    pub settle_within_s: f64,
    pub invariants: Vec<Invariant>,
    pub notes: Vec<String>,
    /// The scenario could not run (setup failed); no invariant was read.
    pub error: Option<String>,
    /// The whole scenario: start, load, settle, stop.
    pub took_s: f64,
}

impl Row {
    pub fn failed(scenario: &'static Scenario, error: String) -> Self {
        Self {
            scenario: scenario.name,
            what: scenario.what,
            fault: scenario.fault,
            orders: Requests::default(),
            reads: Requests::default(),
            struck_at_s: 0.0,
            healed_at_s: 0.0,
            restart_ready_s: None,
            recover_s: None,
            settle_s: None,
            settle_within_s: 0.0,
            invariants: Vec::new(),
            notes: Vec::new(),
            error: Some(error),
            took_s: 0.0,
        }
    }

    pub fn passed(&self) -> bool {
        self.error.is_none()
            && !self.invariants.is_empty()
            && self.invariants.iter().all(|i| i.held)
    }

    pub fn verdict(&self) -> String {
        if let Some(error) = &self.error {
            return format!("did not run: {error}");
        }
        let broken: Vec<&str> = self
            .invariants
            .iter()
            .filter(|i| !i.held)
            .map(|i| i.name)
            .collect();
        if broken.is_empty() {
            "every invariant held".into()
        } else {
            format!("violated: {}", broken.join(", "))
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub mode: &'static str,
    pub binaries: String,
    pub timing: Timing,
    pub rows: Vec<Row>,
    pub took_s: f64,
}

impl Report {
    pub fn new(options: &Options, timing: &Timing) -> Self {
        Self {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            mode: if options.quick { "quick" } else { "full" },
            binaries: options.bin_dir.display().to_string(),
            timing: timing.clone(),
            rows: Vec::new(),
            took_s: 0.0,
        }
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |s| format!("{s:.1} s"))
}

/// The table alone (also what docs/chaos.md quotes).
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | orders offered | accepted | refused | no answer | reads ok/offered | recover | settle | {} |",
        NAMES.join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---|---:|---:|---:|---:|{}",
        "---|".repeat(NAMES.len())
    );
    for row in &report.rows {
        if let Some(error) = &row.error {
            let _ = writeln!(
                out,
                "| `{}` | did not run: {} |{}",
                row.scenario,
                error.lines().next().unwrap_or_default().replace('|', "\\|"),
                " |".repeat(6 + NAMES.len())
            );
            continue;
        }
        let marks: Vec<&str> = NAMES
            .iter()
            .map(
                |name| match row.invariants.iter().find(|i| i.name == *name) {
                    Some(i) if i.held => "✓",
                    Some(_) => "**✗**",
                    None => "?",
                },
            )
            .collect();
        let settle = match row.settle_s {
            Some(s) => format!("{s:.1} s"),
            None => format!("> {:.0} s", row.settle_within_s),
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {}/{} | {} | {} | {} |",
            row.scenario,
            row.orders.offered,
            row.orders.ok,
            by_status(&row.orders.refused_by_status),
            row.orders.no_answer,
            row.reads.ok,
            row.reads.offered,
            seconds(row.recover_s),
            settle,
            marks.join(" | ")
        );
    }
    out
}

fn markdown(report: &Report) -> String {
    let t = &report.timing;
    let mut out = String::new();
    let _ = writeln!(out, "# Chaos report\n");
    let _ = writeln!(
        out,
        "{} · {} run · binaries `{}` · {:.0} s in all. Written by `make chaos` ([docs/chaos.md](../../docs/chaos.md) explains each fault and invariant).\n",
        report.date, report.mode, report.binaries, report.took_s
    );
    let _ = writeln!(
        out,
        "Each scenario: its own copy of the system; {:.0} orders/s and {:.0} product reads/s for {} s through the gateway; the fault strikes at {} s (a killed service is started again after {} s, an outage lasts {} s); every invariant must hold within {} s of the load ending (or the fault healing, if later).\n",
        t.rate,
        t.rate,
        t.load.as_secs(),
        t.strike_at.as_secs(),
        t.down.as_secs(),
        t.outage.as_secs(),
        t.settle_within.as_secs()
    );
    let _ = writeln!(
        out,
        "*refused*: answers other than 2xx, by status; *no answer*: connection refused or reset, or timed out. *recover*: from the fault healing to the end (confirmed or cancelled) of the first order placed after it. *settle*: from the end of the load (or the fault healing, if later) until every invariant held.\n"
    );
    out.push_str(&table(report));
    let _ = writeln!(out, "\n## Scenarios\n");
    for row in &report.rows {
        let _ = writeln!(out, "### `{}`\n\n{}.\n", row.scenario, row.what);
        if let Some(error) = &row.error {
            let _ = writeln!(out, "Did not run:\n\n```text\n{error}\n```\n");
            continue;
        }
        let restart = row
            .restart_ready_s
            .map(|s| format!(", ready again {s:.1} s after its start"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Struck at {:.1} s, healed at {:.1} s{restart}; reads refused: {}; {:.0} s in all.\n",
            row.struck_at_s,
            row.healed_at_s,
            by_status(&row.reads.refused_by_status),
            row.took_s
        );
        for note in &row.notes {
            let _ = writeln!(out, "- {note}");
        }
        for invariant in &row.invariants {
            let mark = if invariant.held {
                "held"
            } else {
                "**VIOLATED**"
            };
            let _ = writeln!(out, "- {} {mark}: {}", invariant.name, invariant.detail);
            for evidence in &invariant.evidence {
                let _ = writeln!(out, "  - `{evidence}`");
            }
        }
        out.push('\n');
    }
    out
}

/// Writes `report.md` and `report.json` into `dir`.
pub fn write(dir: &Path, report: &Report) -> Result<()> {
    std::fs::write(dir.join("report.md"), markdown(report))?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    Ok(())
}
