//! CPU time by part of the system, machine-wide: what one order costs each process.
//!
//! Everything shares the same two cores, so "the system reached N orders/s" means little
//! without knowing where the cores went. Scenario 3 reads every process's user + system time
//! from `/proc` before and after a phase and divides by the orders that ended. Processes that
//! start and exit inside the window (none of the pooled servers do) are not counted.

use std::collections::BTreeMap;

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
}
