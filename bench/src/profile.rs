//! A flat CPU profile of one process during a run, with `perf` (Debian's `linux-perf`), when
//! it is installed and allowed: the evidence the report shows next to a missed target.
//!
//! Flat (no call graphs): release builds have symbols but no frame pointers, so `perf -g`
//! stacks would be noise; which functions and libraries the cycles land in is what tells a
//! lock from a syscall from a serialiser.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};

/// A `perf record` attached to a process.
#[derive(Debug)]
pub struct Profile {
    child: Child,
    data: PathBuf,
    report: PathBuf,
}

impl Profile {
    /// Samples `pid` for `seconds` into `dir/<name>.perf.data`; `None` if perf is unavailable.
    pub fn start(pid: u32, seconds: Duration, dir: &Path, name: &str) -> Option<Self> {
        let data = dir.join(format!("{name}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "499", "-o"])
            .arg(&data)
            .arg("-p")
            .arg(pid.to_string())
            .arg("--")
            .arg("sleep")
            .arg(seconds.as_secs().max(1).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        Some(Self {
            child,
            data,
            report: dir.join(format!("profile-{name}.txt")),
        })
    }

    /// Waits for the recording and writes the flat report (symbols above 0.5 %); returns its
    /// path.
    pub async fn finish(mut self) -> Option<PathBuf> {
        let status = self.child.wait().await.ok()?;
        if !status.success() {
            return None;
        }
        let output = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "dso,symbol",
                "--percent-limit",
                "0.5",
                "-i",
            ])
            .arg(&self.data)
            .output()
            .await
            .ok()?;
        let _ = std::fs::remove_file(&self.data);
        let text = String::from_utf8_lossy(&output.stdout);
        // perf pads the symbol column to the longest name and appends two empty `-` columns;
        // both are cut so the file reads as one short line per symbol.
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| {
                !line.trim().is_empty() && (!line.starts_with('#') || line.contains("Samples"))
            })
            .map(|line| {
                line.trim_end()
                    .trim_end_matches('-')
                    .trim_end()
                    .trim_end_matches('-')
                    .trim_end()
            })
            .collect();
        if lines.is_empty() {
            return None;
        }
        std::fs::write(&self.report, lines.join("\n") + "\n").ok()?;
        Some(self.report)
    }
}
