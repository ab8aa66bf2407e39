//! CPU time by part of the system, machine-wide: what one order costs each process.
//!
//! Everything shares the same two cores, so "the system reached N orders/s" means little
//! without knowing where the cores went. Scenario 3 reads every process's user + system time
//! from `/proc` before and after a phase and divides by the orders that ended. Processes that
//! start and exit inside the window (none of the pooled servers do) are not counted.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

/// The names the report groups processes under. A process counts under the one its command
/// name (`comm`) equals, or, when the kernel cut `comm` to its 15 characters, begins with.
const PARTS: &[(&str, &str)] = &[
    ("postgres", "postgres"),
    ("beam.smp", "rabbitmq"),
    ("ferretdb", "ferretdb"),
    ("redis-server", "redis"),
    ("gateway", "gateway"),
    ("user-service", "user-service"),
    ("catalog-service", "catalog-service"),
    ("inventory-service", "inventory-service"),
    ("order-service", "order-service"),
    ("payment-service", "payment-service"),
    ("notification-service", "notification-service"),
    ("shop-bench", "shop-bench (load generator)"),
];

/// The longest `comm` the kernel keeps (`TASK_COMM_LEN` less the terminating zero).
const COMM_MAX: usize = 15;

fn part_of(comm: &str) -> &'static str {
    PARTS
        .iter()
        .find(|(name, _)| *name == comm || (comm.len() == COMM_MAX && name.starts_with(comm)))
        .map_or("other", |(_, part)| part)
}

/// CPU seconds used so far, summed by part, over every process readable in `/proc`.
pub fn by_part() -> BTreeMap<&'static str, f64> {
    let mut parts = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return parts;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if let Some(seconds) = crate::stack::cpu_seconds(pid) {
            *parts.entry(part_of(comm.trim())).or_default() += seconds;
        }
    }
    parts
}

/// Milliseconds of CPU per unit of work between two [`by_part`] readings, largest first.
pub fn per_unit(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    units: u64,
) -> Vec<(String, f64)> {
    let mut spent: Vec<(String, f64)> = after
        .iter()
        .map(|(part, seconds)| {
            let used = seconds - before.get(part).copied().unwrap_or_default();
            (
                (*part).to_owned(),
                used.max(0.0) * 1000.0 / units.max(1) as f64,
            )
        })
        .filter(|(_, ms)| *ms > 0.0)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    spent
}

/// Parts that are not the system under test: the bench itself (generator, upstream, SMTP
/// sink) and whatever else the machine runs.
const NOT_THE_STACK: [&str; 2] = ["shop-bench (load generator)", "other"];

/// Whether `part` (a name [`by_part`] groups under) is the system under test: a service or
/// one of its stores. The idle watch and the CPU per order both count only these.
pub fn is_stack(part: &str) -> bool {
    !NOT_THE_STACK.contains(&part)
}

/// The whole stack going quiet after the last scenario (issue 29: "idle CPU of the whole
/// stack after a load run returns to near zero"). A system that keeps a core busy once the
/// load has gone — a poll that scans a growing store, a backlog it cannot finish, a retry
/// loop — costs its owner that core around the clock.
#[derive(Debug, Clone, Serialize)]
pub struct Settling {
    /// The stack's CPU in each window, in % of one core, in the order read.
    pub windows_percent: Vec<f64>,
    pub window_s: f64,
    /// What counts as quiet: the whole stack (services and stores) at or below this share.
    pub threshold_percent: f64,
    /// Seconds from the start of the watch to the end of the first quiet window.
    pub quiet_after_s: Option<f64>,
    /// The last window's CPU by part, in % of one core, largest first.
    pub last_by_part: Vec<(String, f64)>,
}

impl Settling {
    pub const THRESHOLD_PERCENT: f64 = 5.0;
}

/// Reads the stack's CPU window by window until one window is quiet or `total` has passed.
pub async fn settle(total: Duration, window: Duration) -> Settling {
    let started = std::time::Instant::now();
    let mut windows_percent = Vec::new();
    let mut last_by_part = Vec::new();
    let mut quiet_after_s = None;
    while started.elapsed() < total {
        let before = by_part();
        tokio::time::sleep(window).await;
        let after = by_part();
        last_by_part = stack_share(&before, &after, window);
        let percent = last_by_part.iter().map(|(_, p)| p).sum::<f64>();
        windows_percent.push(percent);
        if percent <= Settling::THRESHOLD_PERCENT {
            quiet_after_s = Some(started.elapsed().as_secs_f64());
            break;
        }
    }
    Settling {
        windows_percent,
        window_s: window.as_secs_f64(),
        threshold_percent: Settling::THRESHOLD_PERCENT,
        quiet_after_s,
        last_by_part,
    }
}

/// Each stack part's CPU between two readings `window` apart, in % of one core, largest first.
fn stack_share(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    window: Duration,
) -> Vec<(String, f64)> {
    // `per_unit` with the window in milliseconds as the unit count gives ms per ms.
    let millis = window.as_millis().max(1) as u64;
    per_unit(before, after, millis)
        .into_iter()
        .filter(|(part, _)| is_stack(part))
        .map(|(part, ms_per_ms)| (part, ms_per_ms * 100.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_command_names_find_their_part() {
        assert_eq!(part_of("inventory-servi"), "inventory-service");
        assert_eq!(part_of("notification-se"), "notification-service");
        assert_eq!(part_of("postgres"), "postgres");
        assert_eq!(part_of("beam.smp"), "rabbitmq");
        assert_eq!(part_of("kworker/0:1"), "other");
        // A short name is not a truncated one: a shell is not the load generator.
        assert_eq!(part_of("sh"), "other");
        assert_eq!(part_of("go"), "other");
    }

    #[test]
    fn per_unit_divides_what_each_part_used() {
        let before = BTreeMap::from([("postgres", 10.0), ("ferretdb", 5.0)]);
        let after = BTreeMap::from([("postgres", 12.0), ("ferretdb", 9.0), ("redis", 0.0)]);
        assert_eq!(
            per_unit(&before, &after, 100),
            vec![("ferretdb".to_owned(), 40.0), ("postgres".to_owned(), 20.0)]
        );
    }

    #[test]
    fn the_stacks_share_leaves_out_the_bench_and_the_rest_of_the_machine() {
        let before = BTreeMap::from([
            ("postgres", 1.0),
            ("shop-bench (load generator)", 1.0),
            ("other", 1.0),
        ]);
        let after = BTreeMap::from([
            ("postgres", 1.2),
            ("shop-bench (load generator)", 5.0),
            ("other", 9.0),
        ]);
        let share = stack_share(&before, &after, Duration::from_secs(10));
        assert_eq!(share.len(), 1, "{share:?}");
        assert_eq!(share[0].0, "postgres");
        // 0.2 s of CPU in 10 s: 2 % of one core.
        assert!((share[0].1 - 2.0).abs() < 1e-9, "{share:?}");
    }
}
