//! The report: `results/results.json` (everything measured), SVG plots, and `report.md`, which
//! puts each target of BRIEF §9 next to the measured figure and compares this run's ratios
//! with the previous run's.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;
use serde::Serialize;

use crate::{
    loadgen::Measured,
    plot::{Series, bar_chart, latency_chart},
    scenarios::{
        events::EventsResults,
        orders::OrdersResults,
        product::ProductResults,
        proxy::{Point, ProxyResults},
    },
    stack::Footprint,
};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map_or_else(
                    || "unknown".to_owned(),
                    |(_, model)| model.trim().to_owned(),
                ),
            memory_gib: meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0 / 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub date: String,
    pub mode: String,
    pub commit: String,
    pub machine: Machine,
    /// How long the release build took, as the Makefile measured it.
    pub build: Option<String>,
    pub binaries: String,
    pub nginx: Option<String>,
    pub load_average_before: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub meta: Meta,
    pub proxy: Option<ProxyResults>,
    pub product: Option<ProductResults>,
    pub orders: Option<OrdersResults>,
    pub events: Option<EventsResults>,
    pub claims: Option<crate::scenarios::claims::ClaimsResults>,
    pub mail: Option<crate::scenarios::mail::MailResults>,
    pub footprint: Vec<Footprint>,
    /// The whole stack's CPU after the last scenario, until it went quiet.
    pub idle_after_load: Option<crate::cpu::Settling>,
    /// Messages sent to the SMTP sink (one per mail notification-service sent).
    pub mails_sent: u64,
    /// The figures compared between runs (see [`Results::ratios`]).
    pub ratios: BTreeMap<String, f64>,
    /// Scenarios that failed, with the reason.
    pub failures: Vec<String>,
}

impl Results {
    /// The figures two runs should agree on (within 15 %): ratios against the same-run
    /// references, and the system's own headline numbers.
    pub fn compute_ratios(&mut self) {
        let mut ratios = BTreeMap::new();
        if let Some(proxy) = &self.proxy {
            if let Some(ratio) = proxy.ratio {
                ratios.insert("1 gateway / nginx throughput".to_owned(), ratio);
            }
            // The fixed rates are fractions of nginx's saturation (scenario 1); the service
            // time's p99 ratio is the figure judged (issue 29).
            for point in &proxy.points {
                if let Some(ratio) = point.service_p99_ratio {
                    ratios.insert(
                        format!(
                            "1 gateway / nginx p99 service time at {:.0} % of nginx's max",
                            point.share * 100.0
                        ),
                        ratio,
                    );
                }
            }
            if let Some(ratio) = proxy.cpu_ratio() {
                ratios.insert(
                    "1 gateway / nginx CPU per forwarded request".to_owned(),
                    ratio,
                );
            }
        }
        if let Some(product) = &self.product
            && let Some(ratio) = product.ratio_to_nginx
        {
            ratios.insert("2 product read / nginx throughput".to_owned(), ratio);
        }
        if let Some(ratio) = self
            .product
            .as_ref()
            .and_then(|p| p.authenticated.as_ref())
            .and_then(|a| a.ratio_to_nginx)
        {
            ratios.insert("2 authenticated read / nginx throughput".to_owned(), ratio);
        }
        if let Some(orders) = &self.orders {
            // Not "confirmed / offered at 300/s": past the knee that is the share of a growing
            // backlog that happened to finish in time, which no two runs agree on. The most the
            // system delivered while a ramp phase offered its load (its capacity, once offered
            // more), in units of the same run's PostgreSQL commit rate, is the stable figure.
            let knee = orders
                .ramp
                .iter()
                .map(|phase| phase.delivered_per_s)
                .fold(0.0, f64::max);
            if let Some(pgbench) = &orders.pgbench
                && pgbench.tps > 0.0
            {
                ratios.insert(KNEE.to_owned(), knee / (pgbench.tps / 1000.0));
            }
            if let Some(per_order) = orders.sustained.commits_per_order {
                ratios.insert("3 commits per order".to_owned(), per_order);
            }
            if let Some(share) = orders.commit_share_of_pgbench {
                ratios.insert("3 order commits / pgbench commits per s".to_owned(), share);
            }
        }
        if let Some(claims) = &self.claims {
            for claim in &claims.claims {
                if let Some(ratio) = claim.throughput_ratio {
                    ratios.insert(format!("6 {}: A / B throughput", claim.claim), ratio);
                }
            }
        }
        if let Some(mail) = &self.mail {
            if let Some(ratio) = mail.history_p99_ratio() {
                ratios.insert(
                    "7 mail p99 with history / on an empty store".to_owned(),
                    ratio,
                );
            }
            let median = mail.median_window();
            ratios.insert(
                "7 mails delivered / confirmations published, with history".to_owned(),
                median.delivered as f64 / median.publish.ok.max(1) as f64,
            );
        }
        if let Some(events) = &self.events {
            ratios.insert("4 delivered / produced events at target rate".to_owned(), {
                events.target.delivered as f64 / (events.target.produce.ok.max(1)) as f64
            });
        }
        self.ratios = ratios;
    }
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**not met**" }
}

/// The targets table's rows (without its header).
fn targets(md: &mut String, results: &Results) {
    let mut row = |target: &str, measured: String, verdict: &str| {
        let _ = writeln!(md, "| {target} | {measured} | {verdict} |");
    };
    if let Some(proxy) = &results.proxy {
        if let (Some(nginx), Some(ratio)) = (&proxy.nginx, proxy.ratio) {
            row(
                "gateway proxy throughput ≥ nginx (1 worker)",
                format!(
                    "gateway {:.0} req/s vs nginx {:.0} req/s (median windows); **{ratio:.2}×**",
                    proxy.gateway.measured.ok_rate, nginx.measured.ok_rate,
                ),
                verdict(ratio >= 1.0),
            );
            match proxy.cpu_ratio() {
                Some(cpu) => row(
                    "*issue 29*: gateway CPU per forwarded request ≤ 2× nginx's",
                    format!(
                        "{} vs {} ms per 1,000 at saturation: **{cpu:.1}×**",
                        proxy
                            .gateway
                            .cpu_ms_per_1k
                            .map_or("-".into(), |c| format!("{c:.1}")),
                        nginx
                            .cpu_ms_per_1k
                            .map_or("-".into(), |c| format!("{c:.1}")),
                    ),
                    verdict(cpu <= 2.0),
                ),
                None => row(
                    "*issue 29*: gateway CPU per forwarded request ≤ 2× nginx's",
                    "a process's CPU could not be read".into(),
                    "not measured",
                ),
            }
            let at_rates = |ratio: &dyn Fn(&Point) -> Option<f64>,
                            latency: &dyn Fn(&Measured) -> f64| {
                proxy
                    .points
                    .iter()
                    .filter_map(|p| {
                        let n = p.nginx.as_ref()?;
                        Some(format!(
                            "{:.0} % ({:.0}/s): {} vs {} ms, **{}**",
                            p.share * 100.0,
                            p.rate,
                            ms(latency(&p.gateway)),
                            ms(latency(n)),
                            ratio(p).map_or("-".into(), |r| format!("{r:.2}×"))
                        ))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let unsent_note = |unsent: u64| {
                if unsent > 0 {
                    format!("; **{unsent} requests never sent**")
                } else {
                    String::new()
                }
            };
            let (met, unsent) = fixed_rates_met(&proxy.points, |p| p.service_p99_ratio, 1.5);
            row(
                "*issue 29*: gateway p99 service time ≤ 1.5× nginx's at 25/50/75 % of nginx's capacity",
                format!(
                    "{}{}",
                    at_rates(&|p| p.service_p99_ratio, &|m| m.service_time.p99_ms),
                    unsent_note(unsent)
                ),
                verdict(met),
            );
            let (met, unsent) = fixed_rates_met(&proxy.points, |p| p.p99_ratio, 1.0);
            row(
                "gateway p99 (from the due time) no worse than nginx at the same rate",
                format!(
                    "{}{}",
                    at_rates(&|p| p.p99_ratio, &|m| m.latency.p99_ms),
                    unsent_note(unsent)
                ),
                verdict(met),
            );
        } else {
            row(
                "gateway proxy throughput ≥ nginx",
                format!(
                    "gateway {:.0} req/s; nginx not measured",
                    proxy.gateway.measured.ok_rate
                ),
                "not measured",
            );
        }
    }
    if let Some(product) = &results.product {
        row(
            "cached, rate-limited product read ≥ ½ nginx",
            format!(
                "{:.0} req/s = **{}** nginx",
                product.saturation.measured.ok_rate,
                product
                    .ratio_to_nginx
                    .map_or("-".into(), |r| format!("{r:.2}×"))
            ),
            product
                .ratio_to_nginx
                .map_or("not measured", |r| verdict(r >= 0.5)),
        );
        if let Some(auth) = &product.authenticated {
            row(
                "*issue 29*: authenticated read (JWT verified at the gateway and the service) reported beside it",
                format!(
                    "`GET {}`: {:.0} req/s = **{}** nginx ({} refused)",
                    auth.path,
                    auth.saturation.measured.ok_rate,
                    auth.ratio_to_nginx
                        .map_or("-".into(), |r| format!("{r:.2}×")),
                    auth.saturation.measured.refused + auth.saturation.measured.errors
                ),
                "reported",
            );
        }
    }
    if let Some(orders) = &results.orders {
        let s = &orders.sustained;
        let at_300 = orders
            .ramp
            .iter()
            .filter(|phase| phase.offered_rate >= 300.0)
            .map(|phase| phase.delivered_per_s)
            .fold(None, |best: Option<f64>, d| {
                Some(best.map_or(d, |b| b.max(d)))
            });
        row(
            "≥ 300 confirmed orders/s for 60 s",
            format!(
                "the ramp's 300/s phase ({:.0} s) delivered {}/s; the 60 s phase offers {:.0}/s (issue 29's figure below)",
                orders
                    .ramp
                    .iter()
                    .find(|p| p.offered_rate >= 300.0)
                    .map_or(0.0, |p| p.duration_s),
                at_300.map_or("-".into(), |d| format!("{d:.1}")),
                s.offered_rate,
            ),
            verdict(
                s.offered_rate >= 300.0
                    && s.delivered_per_s >= 300.0
                    && s.duration_s >= 60.0
                    && s.post.unsent == 0,
            ),
        );
        row(
            &format!(
                "*issue 29*: ≥ 200 confirmed orders/s for 60 s, p99 `POST` → `CONFIRMED` ≤ 500 ms{}",
                if s.offered_rate < 300.0 {
                    " (BRIEF: 300/s, < 500 ms)"
                } else {
                    ""
                }
            ),
            format!(
                "{:.1} confirmations/s delivered during the {:.0} s at {:.0}/s offered ({:.1}/s of that phase's orders counting its drain); p50 {} ms, p99 {} ms; {} cancelled, {} unfinished, {} POSTs failed",
                s.delivered_per_s,
                s.duration_s,
                s.offered_rate,
                s.confirmed_per_s,
                ms(s.to_confirmed.p50_ms),
                ms(s.to_confirmed.p99_ms),
                s.cancelled,
                s.unfinished,
                s.post.refused + s.post.errors + s.post.unsent,
            ),
            verdict(
                s.offered_rate >= 200.0
                    && s.delivered_per_s >= 200.0
                    && s.duration_s >= 60.0
                    && s.post.unsent == 0
                    && s.unfinished == 0
                    && s.to_confirmed.count > 0
                    && s.to_confirmed.p99_ms <= 500.0,
            ),
        );
        row(
            "*issue 29*: ≤ 8 commits per confirmed order",
            s.commits_per_order.map_or("-".into(), |c| {
                format!("**{c:.1}** commits per order (sustained phase and its drain)")
            }),
            s.commits_per_order
                .map_or("not measured", |c| verdict(c <= 8.0)),
        );
        let cpu = system_cpu_per_order(&s.cpu_ms_per_order);
        row(
            "*issue 29*: ≤ 10 ms of CPU per confirmed order (all processes)",
            cpu.map_or("-".into(), |c| {
                format!("**{c:.1} ms** per order, services and stores (the load generator and the rest of the machine left out)")
            }),
            cpu.map_or("not measured", |c| verdict(c <= 10.0)),
        );
        row(
            "*issue 29*: the knee per 1,000 `pgbench -N` commits/s",
            match (&orders.pgbench, results.ratios.get(KNEE)) {
                (Some(pgbench), Some(knee)) => format!(
                    "**{knee:.1}** orders/s (the ramp's most delivered) per 1,000 commits/s; `pgbench` {:.0} tps; the sustained phase used {} of that commit rate",
                    pgbench.tps,
                    orders
                        .commit_share_of_pgbench
                        .map_or("-".into(), |r| format!("{:.0} %", r * 100.0)),
                ),
                _ => "pgbench not measured".into(),
            },
            "reported",
        );
    }
    if let Some(mail) = &results.mail {
        let m = mail.median_window();
        row(
            "*issue 29*: order confirmed → email accepted ≥ 200/s, p99 ≤ 1 s, with 100,000 notifications stored",
            format!(
                "{:.0} mails/s delivered at {:.0}/s offered, p50 {} ms, p99 {} ms with {} stored (median of {} windows; {} missing); on an almost empty store p99 {} ms",
                m.delivered_per_s,
                m.rate,
                ms(m.latency.p50_ms),
                ms(m.latency.p99_ms),
                m.stored,
                mail.with_history.len(),
                m.missing,
                ms(mail.fresh.latency.p99_ms),
            ),
            verdict(
                m.rate >= 200.0
                    && m.stored >= 100_000
                    && m.missing == 0
                    && m.publish.unsent == 0
                    && m.publish.errors == 0
                    && m.latency.p99_ms <= 1000.0,
            ),
        );
    }
    if let Some(events) = &results.events {
        let t = &events.target;
        row(
            "outbox → consumer p99 < 50 ms at 1,000 events/s (the library, on a fresh database)",
            format!(
                "p50 {} ms, p99 {} ms at {:.0}/s ({} of {} delivered, {} never produced)",
                ms(t.latency.p50_ms),
                ms(t.latency.p99_ms),
                t.rate,
                t.delivered,
                t.produce.ok,
                t.produce.unsent,
            ),
            verdict(
                t.rate >= 1000.0
                    && t.latency.p99_ms < 50.0
                    && t.delivered >= t.produce.ok
                    && t.produce.unsent == 0,
            ),
        );
    }
    if let Some(idle) = &results.idle_after_load {
        row(
            "*issue 29*: idle CPU of the whole stack returns to near zero after the load",
            format!(
                "{} s windows after the last scenario (% of one core, services and stores): {}; {}",
                idle.window_s,
                idle.windows_percent
                    .iter()
                    .map(|p| format!("{p:.1}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                idle.quiet_after_s.map_or_else(
                    || format!(
                        "never at or below {} % within the watch",
                        idle.threshold_percent
                    ),
                    |s| format!("at or below {} % after {s:.0} s", idle.threshold_percent)
                ),
            ),
            verdict(idle.quiet_after_s.is_some()),
        );
    }
    if !results.footprint.is_empty() {
        let over: Vec<String> = results
            .footprint
            .iter()
            .filter(|f| f.idle_rss_mib >= 30.0)
            .map(|f| format!("{} {:.1} MiB", f.service, f.idle_rss_mib))
            .collect();
        let max = results
            .footprint
            .iter()
            .map(|f| f.idle_rss_mib)
            .fold(0.0, f64::max);
        row(
            "each service idle < 30 MiB RSS",
            format!(
                "largest {max:.1} MiB{}",
                if over.is_empty() {
                    String::new()
                } else {
                    format!("; over: {}", over.join(", "))
                }
            ),
            verdict(over.is_empty()),
        );
        let slow: Vec<String> = results
            .footprint
            .iter()
            .filter(|f| f.ready_s > 1.0)
            .map(|f| format!("{} {:.2} s", f.service, f.ready_s))
            .collect();
        let max = results
            .footprint
            .iter()
            .map(|f| f.ready_s)
            .fold(0.0, f64::max);
        row(
            "each service ready within 1 s of its stores",
            format!(
                "slowest {max:.2} s{}",
                if slow.is_empty() {
                    String::new()
                } else {
                    format!("; over: {}", slow.join(", "))
                }
            ),
            verdict(slow.is_empty()),
        );
    }
}

/// The name of the knee figure among [`Results::ratios`].
const KNEE: &str = "3 ramp's most delivered orders/s per 1,000 pgbench commits/s";

/// CPU per order summed over the system's own processes: everything but the load generator
/// and the machine's other processes.
fn system_cpu_per_order(parts: &[(String, f64)]) -> Option<f64> {
    (!parts.is_empty()).then(|| {
        parts
            .iter()
            .filter(|(part, _)| crate::cpu::is_stack(part))
            .map(|(_, ms)| ms)
            .sum()
    })
}

fn measured_row(out: &mut String, label: &str, m: &Measured) {
    let _ = writeln!(
        out,
        "| {label} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        m.offered_rate
            .map_or("max (closed loop)".to_owned(), |r| format!("{r:.0}")),
        m.ok_rate,
        ms(m.latency.p50_ms),
        ms(m.latency.p99_ms),
        ms(m.latency.p999_ms),
        ms(m.latency.max_ms),
        ms(m.service_time.p50_ms),
        ms(m.service_time.p99_ms),
        m.refused + m.errors,
        m.unsent,
        ms(m.max_send_lag_ms),
        cpu_percent(m),
    );
}

/// The bench process's CPU over a window as a share of one core: "12 %", or "-".
fn cpu_percent(m: &Measured) -> String {
    m.generator_cpu_percent
        .map_or("-".into(), |percent| format!("{percent:.0} %"))
}

/// A fixed-rate verdict of scenario 1, and how many requests were left unsent at those rates:
/// met when every paired ratio `ratio` picks is ≤ `limit` *and* nothing was left unsent. A
/// rate at which requests were never sent was not kept up with (by the generator or the
/// proxy), whatever the p99 of the ones that went out.
fn fixed_rates_met(
    points: &[Point],
    ratio: impl Fn(&Point) -> Option<f64>,
    limit: f64,
) -> (bool, u64) {
    let unsent: u64 = points
        .iter()
        .map(|p| p.gateway.unsent + p.nginx.as_ref().map_or(0, |n| n.unsent))
        .sum();
    let met = unsent == 0 && points.iter().all(|p| ratio(p).is_none_or(|r| r <= limit));
    (met, unsent)
}

/// What became of the requests that did not succeed: "0", or e.g. "263 (503 ×250, 429 ×13)",
/// "5504 (503 ×5504) + 11229 never sent", with connection errors and timeouts as "errors".
fn not_accepted(m: &Measured) -> String {
    let total = m.refused + m.errors + m.unsent;
    if total == 0 {
        return "0".into();
    }
    let mut parts: Vec<String> = m
        .refused_by_status
        .iter()
        .map(|(status, count)| format!("{status} ×{count}"))
        .collect();
    if m.errors > 0 {
        parts.push(format!("errors ×{}", m.errors));
    }
    if m.unsent > 0 {
        parts.push(format!("never sent ×{}", m.unsent));
    }
    format!("{total} ({})", parts.join(", "))
}

/// "Saturation windows (ok req/s; the median is in the table): nginx 1 / 2 / 3; …".
fn windows_line(targets: &[(&str, &crate::scenarios::proxy::Saturation)]) -> String {
    let parts: Vec<String> = targets
        .iter()
        .map(|(name, saturation)| {
            let rates: Vec<String> = saturation
                .windows
                .iter()
                .map(|rate| format!("{rate:.0}"))
                .collect();
            format!("{name} {}", rates.join(" / "))
        })
        .collect();
    format!(
        "Saturation windows (ok req/s, in the order run; the table shows the median): {}.",
        parts.join("; ")
    )
}

/// The columns of every [`measured_row`] table. Latency (p50 … max) runs from each request's
/// due time; service time from the moment it was sent; *unsent*: requests due in the window
/// that the generator or its connections never got out (failures, like *failed*); *generator
/// CPU*: the bench process over the window, in % of one core.
const MEASURED_HEADER: &str = "| run | offered (req/s) | achieved ok (req/s) | p50 ms | p99 ms | p99.9 ms | max ms | service p50 ms | service p99 ms | failed | unsent | generator lag ms | generator CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

/// Writes `dir/report.md`, `dir/results/results.json` and the plots.
pub fn write(
    dir: &Path,
    results: &Results,
    previous: Option<&BTreeMap<String, f64>>,
) -> Result<()> {
    let out_dir = dir.join("results");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    let plots = plots(&out_dir, results);

    let mut md = String::new();
    let meta = &results.meta;
    let _ = writeln!(
        md,
        "# `make bench`: the system against nginx and PostgreSQL\n"
    );
    let _ = writeln!(
        md,
        "Generated by `shop-bench` ({} mode) on {}. Raw results: [`results/results.json`](results/results.json).\n",
        meta.mode, meta.date
    );
    if meta.mode != "full" {
        let _ = writeln!(
            md,
            "> **Quick mode**: every scenario ran for a few seconds only. These numbers show that the harness works, not how fast the system is.\n"
        );
    }
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| commit | `{}` |", meta.commit);
    let _ = writeln!(
        md,
        "| machine | {} CPUs ({}), {:.1} GiB memory, Linux {} |",
        meta.machine.cpus, meta.machine.cpu_model, meta.machine.memory_gib, meta.machine.kernel
    );
    let _ = writeln!(
        md,
        "| load average before the run | {} |",
        meta.load_average_before
    );
    let _ = writeln!(
        md,
        "| release build | {} |",
        meta.build
            .as_deref()
            .unwrap_or("not measured (binaries given)")
    );
    let _ = writeln!(md, "| binaries | `{}` |", meta.binaries);
    let _ = writeln!(
        md,
        "| reference proxy | {} |",
        meta.nginx
            .as_deref()
            .unwrap_or("nginx not installed: scenario 1 ran without it")
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Everything runs on this one machine at the same time: load generator, proxies, services, PostgreSQL, RabbitMQ, Redis, FerretDB. Absolute numbers therefore say little; the ratios against nginx and pgbench measured in the same run are the figures that matter.\n"
    );

    // ---- targets
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "BRIEF §9's targets, and issue 29's where it sets its own (tagged *issue 29*), each met or not. A ratio is the median of the paired windows' ratios (nginx and the system under test taking turns, window by window).\n"
    );
    let _ = writeln!(md, "| target | measured | verdict |\n|---|---|---|");
    targets(&mut md, results);
    for failure in &results.failures {
        let _ = writeln!(md, "| scenario failed | {failure} | **not measured** |");
    }
    let _ = writeln!(md);

    // ---- reproducibility
    let _ = writeln!(
        md,
        "## Reproducibility: this run against the previous one\n"
    );
    match previous {
        Some(previous) if !previous.is_empty() => {
            let _ = writeln!(
                md,
                "| figure | previous | this run | difference |\n|---|---|---|---|"
            );
            for (name, value) in &results.ratios {
                match previous.get(name) {
                    Some(before) if *before != 0.0 => {
                        let diff = (value - before) / before * 100.0;
                        let _ = writeln!(
                            md,
                            "| {name} | {before:.3} | {value:.3} | {diff:+.1} %{} |",
                            if diff.abs() > 15.0 {
                                " (over 15 %)"
                            } else {
                                ""
                            }
                        );
                    }
                    _ => {
                        let _ = writeln!(md, "| {name} | - | {value:.3} | |");
                    }
                }
            }
        }
        _ => {
            let _ = writeln!(
                md,
                "No previous run of this mode in `results/`: run `make bench` again to get the comparison.\n"
            );
            let _ = writeln!(md, "| figure | this run |\n|---|---|");
            for (name, value) in &results.ratios {
                let _ = writeln!(md, "| {name} | {value:.3} |");
            }
        }
    }
    let _ = writeln!(md);

    // ---- scenario 1
    if let Some(proxy) = &results.proxy {
        let _ = writeln!(md, "## 1. Proxy overhead: gateway vs nginx\n");
        let _ = writeln!(
            md,
            "`GET /.well-known/jwks.json` (public, not cached) forwarded to the same trivial upstream (a hyper server in the bench binary answering a 110-byte JSON document), {} keep-alive connections. The gateway counts every request against the anonymous rate limit in Redis (one `EVALSHA` round trip) before forwarding; nginx does no such work. Saturation is closed loop (each connection sends back to back); the fixed rates are open loop at shares of nginx's saturation throughput (issue 29 states its targets so; where a share is beyond the gateway's capacity its windows show requests left unsent and a service time set by its queue), with latency from the due send time and service time from the send.\n",
            proxy.connections
        );
        md.push_str(MEASURED_HEADER);
        measured_row(
            &mut md,
            "upstream alone (no proxy)",
            &proxy.upstream_direct.measured,
        );
        if let Some(nginx) = &proxy.nginx {
            measured_row(&mut md, "nginx, saturation", &nginx.measured);
        }
        measured_row(&mut md, "gateway, saturation", &proxy.gateway.measured);
        for point in &proxy.points {
            if let Some(nginx) = &point.nginx {
                measured_row(&mut md, "nginx", nginx);
            }
            measured_row(&mut md, "gateway", &point.gateway);
        }
        let _ = writeln!(md);
        let mut windows = vec![("upstream alone", &proxy.upstream_direct)];
        if let Some(nginx) = &proxy.nginx {
            windows.push(("nginx", nginx));
        }
        windows.push(("gateway", &proxy.gateway));
        let _ = writeln!(md, "{}\n", windows_line(&windows));
        if !proxy.paired_ratios.is_empty() {
            let _ = writeln!(
                md,
                "nginx and the gateway are saturated in alternating windows; the throughput ratio is the median of the pairs' ratios: {}.\n",
                joined(&proxy.paired_ratios, 3)
            );
        }
        let paired_p99: Vec<String> = proxy
            .points
            .iter()
            .filter(|p| !p.p99_ratios.is_empty())
            .map(|p| format!("{:.0}/s: {}", p.rate, joined(&p.p99_ratios, 2)))
            .collect();
        if !paired_p99.is_empty() {
            let _ = writeln!(
                md,
                "At each fixed rate nginx and the gateway also take turns, window by window; the rows above are each one's window with the median p99, and the p99 ratio judged is the median of the pairs' ratios: {}.\n",
                paired_p99.join("; ")
            );
        }
        let _ = writeln!(
            md,
            "CPU per 1,000 requests at saturation (the proxy process only): nginx worker {}, gateway {}. This is the fairer efficiency figure on a shared machine: nginx is limited to one worker (one core), the gateway's runtime uses both cores.\n",
            proxy
                .nginx
                .as_ref()
                .and_then(|n| n.cpu_ms_per_1k)
                .map_or("-".into(), |c| format!("{c:.1} ms")),
            proxy
                .gateway
                .cpu_ms_per_1k
                .map_or("-".into(), |c| format!("{c:.1} ms")),
        );
        if let Some(profile) = &proxy.profile {
            let _ = writeln!(
                md,
                "Flat CPU profile of the gateway at saturation: [`{0}`]({0}).\n",
                relative(dir, profile)
            );
        }
        let _ = writeln!(md, "![proxy latency](results/proxy-latency.svg)\n");
    }

    // ---- scenario 2
    if let Some(product) = &results.product {
        let _ = writeln!(md, "## 2. Product read through the gateway\n");
        let _ = writeln!(
            md,
            "`GET {}` with a user's bearer token, rate limit counted (limit far above the load), answered from the Redis cache (only `X-Cache: HIT` answers count as successes). Note: the product routes are public in the gateway's table, so the gateway forwards the token without verifying it; the token costs nothing on this path. The *authenticated read* rows are `GET /api/v1/users/me` with the same token: the gateway verifies the JWT and counts the address's and the user's limits, user-service verifies it again and reads its row from PostgreSQL (only `200` answers count).\n",
            product.path
        );
        md.push_str(MEASURED_HEADER);
        if let Some(nginx) = &product.nginx {
            measured_row(
                &mut md,
                "nginx (scenario 1's path), saturation",
                &nginx.measured,
            );
        }
        measured_row(&mut md, "saturation", &product.saturation.measured);
        for point in &product.points {
            measured_row(&mut md, "fixed rate", point);
        }
        if let Some(auth) = &product.authenticated {
            if let Some(nginx) = &auth.nginx {
                measured_row(
                    &mut md,
                    "nginx, beside the authenticated read",
                    &nginx.measured,
                );
            }
            measured_row(
                &mut md,
                "authenticated read, saturation",
                &auth.saturation.measured,
            );
        }
        let _ = writeln!(md);
        let mut windows = Vec::new();
        if let Some(nginx) = &product.nginx {
            windows.push(("nginx", nginx));
        }
        windows.push(("product read", &product.saturation));
        let _ = writeln!(md, "{}\n", windows_line(&windows));
        if !product.paired_ratios.is_empty() {
            let _ = writeln!(
                md,
                "nginx (scenario 1's proxy, still running) and the product read are saturated in alternating windows; the ratio to nginx is the median of the pairs' ratios: {}.\n",
                joined(&product.paired_ratios, 3)
            );
        }
        let _ = writeln!(
            md,
            "Gateway CPU per 1,000 reads at saturation: {} (cached product read), {} (authenticated read; user-service's CPU not included).\n",
            product
                .saturation
                .cpu_ms_per_1k
                .map_or("-".into(), |c| format!("{c:.1} ms")),
            product
                .authenticated
                .as_ref()
                .and_then(|a| a.saturation.cpu_ms_per_1k)
                .map_or("-".into(), |c| format!("{c:.1} ms"))
        );
        if let Some(auth) = product
            .authenticated
            .as_ref()
            .filter(|a| !a.paired_ratios.is_empty())
        {
            let _ = writeln!(
                md,
                "The authenticated read's paired ratios to nginx: {}.\n",
                joined(&auth.paired_ratios, 3)
            );
        }
        if let Some(profile) = &product.profile {
            let _ = writeln!(
                md,
                "Flat CPU profile of the gateway at saturation: [`{0}`]({0}).\n",
                relative(dir, profile)
            );
        }
        let _ = writeln!(md, "![product read latency](results/product-latency.svg)\n");
    }

    // ---- scenario 3
    if let Some(orders) = &results.orders {
        let _ = writeln!(md, "## 3. Orders end to end\n");
        let _ = writeln!(
            md,
            "{} registered users order one unit of one of the {} demo products each (approving card `4242…`), by turns, through the gateway. Latency runs from the due send time of `POST /api/v1/orders` to the arrival of the order's `order.order.confirmed` event on a queue of the bench's own (so it includes order-service's outbox relay). Each phase is drained (up to 30 s) before the next starts. *delivered/s*: confirmations that arrived while the phase offered its load, per second — the throughput the system kept up; *confirmed/s*: the phase's own orders confirmed by the end of its drain, per second of the phase (past the knee it also counts a backlog finished after the phase).\n",
            orders.users, orders.products
        );
        let _ = writeln!(
            md,
            "| phase | offered orders/s | POST ok/s | POST p99 ms | POSTs not accepted | delivered/s | confirmed/s | cancelled | unfinished | p50 → CONFIRMED ms | p99 → CONFIRMED ms | max ms | commits/order | generator CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let row = |md: &mut String, label: &str, p: &crate::scenarios::orders::Phase| {
            let _ = writeln!(
                md,
                "| {label} | {:.0} | {:.1} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
                p.offered_rate,
                p.post.ok_rate,
                ms(p.post.latency.p99_ms),
                not_accepted(&p.post),
                p.delivered_per_s,
                p.confirmed_per_s,
                p.cancelled,
                p.unfinished,
                ms(p.to_confirmed.p50_ms),
                ms(p.to_confirmed.p99_ms),
                ms(p.to_confirmed.max_ms),
                p.commits_per_order
                    .map_or("-".into(), |c| format!("{c:.1}")),
                cpu_percent(&p.post),
            );
        };
        for p in &orders.ramp {
            row(&mut md, &format!("ramp {:.0} s", p.duration_s), p);
        }
        row(
            &mut md,
            &format!("**sustained {:.0} s**", orders.sustained.duration_s),
            &orders.sustained,
        );
        let _ = writeln!(md);
        let by_db: Vec<String> = orders
            .sustained
            .commits_by_database
            .iter()
            .map(|(db, per)| format!("{db} {per:.1}"))
            .collect();
        let _ = writeln!(
            md,
            "Commits per order in the sustained phase, by database (from `pg_stat_database`, including every background commit of those services meanwhile): {}.\n",
            by_db.join(", ")
        );
        // Where the two cores went, per order: the lowest rate (below the knee) and the
        // sustained phase.
        let cpu_phases: Vec<(String, &crate::scenarios::orders::Phase)> = orders
            .ramp
            .first()
            .map(|p| (format!("ramp at {:.0}/s", p.offered_rate), p))
            .into_iter()
            .chain([(
                format!("sustained at {:.0}/s", orders.sustained.offered_rate),
                &orders.sustained,
            )])
            .filter(|(_, p)| !p.cpu_ms_per_order.is_empty())
            .collect();
        if !cpu_phases.is_empty() {
            let _ = writeln!(
                md,
                "CPU milliseconds per ended order, by part of the system (every process on the machine, user + system time over the phase and its drain; `other` is everything else, the kernel's threads included). At N orders/s the two cores allow about 2,000 / total ms per order:\n"
            );
            let mut parts: Vec<String> = Vec::new();
            for (_, phase) in &cpu_phases {
                for (part, _) in &phase.cpu_ms_per_order {
                    if !parts.contains(part) {
                        parts.push(part.clone());
                    }
                }
            }
            let header: Vec<&str> = cpu_phases.iter().map(|(label, _)| label.as_str()).collect();
            let _ = writeln!(
                md,
                "| part | {} |\n|---|{}",
                header.join(" | "),
                "---|".repeat(header.len())
            );
            for part in &parts {
                let cells: Vec<String> = cpu_phases
                    .iter()
                    .map(|(_, phase)| {
                        phase
                            .cpu_ms_per_order
                            .iter()
                            .find(|(p, _)| p == part)
                            .map_or("-".into(), |(_, ms)| format!("{ms:.1}"))
                    })
                    .collect();
                let _ = writeln!(md, "| {part} | {} |", cells.join(" | "));
            }
            let totals: Vec<String> = cpu_phases
                .iter()
                .map(|(_, phase)| {
                    let total: f64 = phase.cpu_ms_per_order.iter().map(|(_, ms)| ms).sum();
                    format!(
                        "**{total:.1}** (≈ {:.0} orders/s on 2 cores)",
                        2000.0 / total.max(0.001)
                    )
                })
                .collect();
            let _ = writeln!(md, "| **total** | {} |\n", totals.join(" | "));
        }
        if let Some(pgbench) = &orders.pgbench {
            let _ = writeln!(
                md,
                "`pgbench -N -c {} -j 2 -T {:.0}` (scale {}) on the same server, same run: **{:.0} commits/s**. At {} commits per order, PostgreSQL's own commit rate would bound the system at about {} orders/s; the sustained phase used {} of it.\n",
                pgbench.clients,
                pgbench.duration_s,
                pgbench.scale,
                pgbench.tps,
                orders
                    .sustained
                    .commits_per_order
                    .map_or("-".into(), |c| format!("{c:.1}")),
                orders
                    .sustained
                    .commits_per_order
                    .map_or("-".into(), |c| format!("{:.0}", pgbench.tps / c)),
                orders
                    .commit_share_of_pgbench
                    .map_or("-".into(), |r| format!("{:.0} %", r * 100.0)),
            );
        }
        let reasons: BTreeMap<&String, u64> = orders
            .ramp
            .iter()
            .chain(std::iter::once(&orders.sustained))
            .flat_map(|p| p.cancel_reasons.iter())
            .fold(BTreeMap::new(), |mut acc, (reason, n)| {
                *acc.entry(reason).or_default() += n;
                acc
            });
        if !reasons.is_empty() {
            let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            let _ = writeln!(md, "Cancellation reasons: {}.\n", list.join(", "));
        }
        let _ = writeln!(
            md,
            "Mails notification-service sent during the run (to the bench's SMTP sink): {}.\n",
            results.mails_sent
        );
        let _ = writeln!(md, "![orders latency](results/orders-latency.svg)\n");
    }

    // ---- scenario 4
    if let Some(events) = &results.events {
        let _ = writeln!(md, "## 4. Event pipeline: outbox → consumer\n");
        let _ = writeln!(
            md,
            "The `shop_messaging` code every service runs, in the bench process against a fresh database and vhost: one transaction per event writes the outbox row and commits through `outbox::postgres::commit`, the relay (woken in process after that commit) publishes with confirms, and a PostgreSQL consumer claims each event in its inbox and runs the handler. Latency: producer's due time → the handler's first line.\n"
        );
        let _ = writeln!(
            md,
            "| offered events/s | produced ok/s | never produced | delivered | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | generator CPU |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for p in &events.points {
            let _ = writeln!(
                md,
                "| {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.rate,
                p.produce.ok_rate,
                p.produce.unsent,
                p.delivered,
                ms(p.latency.p50_ms),
                ms(p.latency.p90_ms),
                ms(p.latency.p99_ms),
                ms(p.latency.p999_ms),
                ms(p.latency.max_ms),
                cpu_percent(&p.produce),
            );
        }
        let _ = writeln!(md, "\n![event latency](results/events-latency.svg)\n");
    }

    // ---- scenario 5
    if !results.footprint.is_empty() {
        let _ = writeln!(md, "## 5. Footprint\n");
        let _ = writeln!(
            md,
            "Each service started alone (the previous one already ready, stores up); ready = from `exec` to the first `/readyz` 200. Idle RSS read after all seven were up and idle; the last column after every scenario ran.\n"
        );
        let _ = writeln!(
            md,
            "| service | ready (s) | idle RSS (MiB) | RSS after the run (MiB) |\n|---|---|---|---|"
        );
        for f in &results.footprint {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.1} | {} |",
                f.service,
                f.ready_s,
                f.idle_rss_mib,
                f.rss_after_load_mib
                    .map_or("-".into(), |r| format!("{r:.1}"))
            );
        }
        let _ = writeln!(
            md,
            "\n![idle RSS](results/footprint-rss.svg) ![ready time](results/footprint-ready.svg)\n"
        );
    }

    // ---- scenario 6
    if let Some(claims) = &results.claims {
        claims_section(&mut md, claims);
    }

    // ---- scenario 7
    if let Some(mail) = &results.mail {
        mail_section(&mut md, mail);
    }

    if !plots.is_empty() {
        let _ = writeln!(md, "Plot errors: {}\n", plots.join("; "));
    }

    let findings = dir.join("findings.md");
    if let Ok(text) = std::fs::read_to_string(&findings) {
        let _ = writeln!(md, "{}", text.trim_end());
    }
    std::fs::write(dir.join("report.md"), md)?;
    Ok(())
}

/// Scenario 7: the same rate on an almost empty store and with the history written.
fn mail_section(md: &mut String, mail: &crate::scenarios::mail::MailResults) {
    let _ = writeln!(md, "## 7. Mail on a store with history\n");
    let _ = writeln!(
        md,
        "`order.order.confirmed` events published to the stack's broker (the services' own publisher, confirms) for {} customers (written into user-service's table) → notification-service records each, looks the customer up in user-service over gRPC, renders, claims and sends → the bench's SMTP sink accepts the mail. Latency: the event's due time → the sink's acceptance. The same rate first on an almost empty store, then after {} sent notifications were written into the history (in {:.0} s); the verdict is the median window by p99. CPU per mail counts notification-service, FerretDB, user-service and RabbitMQ.\n",
        mail.customers,
        mail.median_window()
            .stored
            .saturating_sub(mail.fresh.stored),
        mail.history_fill_s
    );
    let _ = writeln!(
        md,
        "| stored | offered/s | published | never published | delivered | missing | delivered/s | p50 ms | p99 ms | max ms | CPU ms per mail | generator CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (label, p) in std::iter::once(("", &mail.fresh)).chain(
        mail.with_history
            .iter()
            .enumerate()
            .map(|(i, p)| (if i == mail.median { " (median)" } else { "" }, p)),
    ) {
        let cpu: Vec<String> = p
            .cpu_ms_per_mail
            .iter()
            .map(|(part, ms)| format!("{part} {ms:.2}"))
            .collect();
        let _ = writeln!(
            md,
            "| {}{} | {:.0} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            p.stored,
            label,
            p.rate,
            p.publish.ok,
            p.publish.unsent,
            p.delivered,
            p.missing,
            p.delivered_per_s,
            ms(p.latency.p50_ms),
            ms(p.latency.p99_ms),
            ms(p.latency.max_ms),
            cpu.join(", "),
            cpu_percent(&p.publish),
        );
    }
    if let Some(ratio) = mail.history_p99_ratio() {
        let _ = writeln!(
            md,
            "\np99 with history / on the almost empty store: **{ratio:.2}×** (≈ 1 when the cost of one mail does not grow with what is stored).\n"
        );
    }
}

/// Scenario 6: each claim, its two ways, and the three comparisons.
fn claims_section(md: &mut String, claims: &crate::scenarios::claims::ClaimsResults) {
    let _ = writeln!(
        md,
        "## 6. The documents' speed claims, measured
"
    );
    let _ = writeln!(
        md,
        "What the source documents say about speed, each put to the same data two ways on this stack (`bench/src/scenarios/claims.rs`). Per way: closed-loop saturation with {} connections in {} alternating windows (the ratio is the median of the pairs'), the CPU of the processes that serve it per 1,000 answers, and the median service time of one call with one worker on an otherwise idle stack.\n",
        claims.connections,
        claims
            .claims
            .first()
            .map_or(0, |claim| claim.a.saturation.windows.len())
    );
    let _ = writeln!(
        md,
        "| claim | way | answers/s | CPU per 1,000 (ms) | one call, p50 (ms) | one call, p99 (ms) | served by |\n|---|---|---|---|---|---|---|"
    );
    for claim in &claims.claims {
        for (which, way) in [("A", &claim.a), ("B", &claim.b)] {
            let _ = writeln!(
                md,
                "| {} | {which}: {} | {:.0} | {} | {:.3} | {:.3} | {} |",
                claim.claim,
                way.label,
                way.saturation.measured.ok_rate,
                way.saturation
                    .cpu_ms_per_1k
                    .map_or("-".into(), |c| format!("{c:.1}")),
                way.idle.service_time.p50_ms,
                way.idle.service_time.p99_ms,
                way.served_by.join(", ")
            );
        }
    }
    let _ = writeln!(
        md,
        "\n| claim | A / B throughput | B / A one-call time | B / A CPU per answer | not like for like |\n|---|---|---|---|---|"
    );
    let times = |value: Option<f64>| value.map_or("-".into(), |v| format!("{v:.2}×"));
    for claim in &claims.claims {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            claim.claim,
            times(claim.throughput_ratio),
            times(claim.idle_latency_ratio),
            times(claim.cpu_ratio),
            claim.caveat
        );
    }
    let refused: Vec<String> = claims
        .claims
        .iter()
        .flat_map(|claim| [&claim.a, &claim.b])
        .filter(|way| way.saturation.measured.refused + way.saturation.measured.errors > 0)
        .map(|way| {
            format!(
                "{}: {} refused {:?}, {} errors",
                way.label,
                way.saturation.measured.refused,
                way.saturation.measured.refused_by_status,
                way.saturation.measured.errors
            )
        })
        .collect();
    if !refused.is_empty() {
        let _ = writeln!(
            md,
            "\nNot counted as answers (median window): {}.",
            refused.join("; ")
        );
    }
    let _ = writeln!(md);
}

/// `0.255 / 0.224 / 0.297`: a list of ratios as the report prints them.
fn joined(values: &[f64], precision: usize) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("{v:.precision$}")).collect();
    values.join(" / ")
}

fn relative(dir: &Path, path: &str) -> String {
    Path::new(path)
        .strip_prefix(dir)
        .map_or_else(|_| path.to_owned(), |p| p.display().to_string())
}

/// Draws every plot; returns the errors (a plot failing must not lose the report).
fn plots(dir: &Path, results: &Results) -> Vec<String> {
    let mut errors = Vec::new();
    let mut check = |name: &str, result: Result<()>| {
        if let Err(err) = result {
            errors.push(format!("{name}: {err:#}"));
        }
    };
    if let Some(proxy) = &results.proxy {
        let mut series = Vec::new();
        let rates =
            |f: &dyn Fn(&crate::scenarios::proxy::Point) -> Option<f64>| -> Vec<(f64, f64)> {
                proxy
                    .points
                    .iter()
                    .filter_map(|p| Some((p.rate, f(p)?)))
                    .collect()
            };
        if proxy.nginx.is_some() {
            series.push(
                Series::new(
                    "nginx p50",
                    rates(&|p| Some(p.nginx.as_ref()?.latency.p50_ms)),
                )
                .dashed(),
            );
            series.push(
                Series::new(
                    "nginx p99",
                    rates(&|p| Some(p.nginx.as_ref()?.latency.p99_ms)),
                )
                .dashed(),
            );
            series.push(
                Series::new(
                    "nginx p99.9",
                    rates(&|p| Some(p.nginx.as_ref()?.latency.p999_ms)),
                )
                .dashed(),
            );
        }
        series.push(Series::new(
            "gateway p50",
            rates(&|p| Some(p.gateway.latency.p50_ms)),
        ));
        series.push(Series::new(
            "gateway p99",
            rates(&|p| Some(p.gateway.latency.p99_ms)),
        ));
        series.push(Series::new(
            "gateway p99.9",
            rates(&|p| Some(p.gateway.latency.p999_ms)),
        ));
        check(
            "proxy-latency",
            latency_chart(
                &dir.join("proxy-latency.svg"),
                "Proxy overhead: latency vs offered rate",
                "offered requests/s",
                &series,
                None,
            ),
        );
        let mut bars = vec![(
            "upstream alone".to_owned(),
            proxy.upstream_direct.measured.ok_rate,
        )];
        if let Some(nginx) = &proxy.nginx {
            bars.push(("nginx".to_owned(), nginx.measured.ok_rate));
        }
        bars.push(("gateway proxy".to_owned(), proxy.gateway.measured.ok_rate));
        if let Some(product) = &results.product {
            bars.push((
                "gateway product read".to_owned(),
                product.saturation.measured.ok_rate,
            ));
        }
        check(
            "throughput",
            bar_chart(
                &dir.join("throughput.svg"),
                "Saturation throughput",
                "requests/s",
                &bars,
                None,
            ),
        );
    }
    if let Some(product) = &results.product {
        let points = |f: &dyn Fn(&Measured) -> f64| -> Vec<(f64, f64)> {
            product
                .points
                .iter()
                .map(|m| (m.offered_rate.unwrap_or_default(), f(m)))
                .collect()
        };
        check(
            "product-latency",
            latency_chart(
                &dir.join("product-latency.svg"),
                "Cached product read through the gateway",
                "offered requests/s",
                &[
                    Series::new("p50", points(&|m| m.latency.p50_ms)),
                    Series::new("p99", points(&|m| m.latency.p99_ms)),
                    Series::new("p99.9", points(&|m| m.latency.p999_ms)),
                ],
                None,
            ),
        );
    }
    if let Some(orders) = &results.orders {
        let mut phases: Vec<&crate::scenarios::orders::Phase> = orders.ramp.iter().collect();
        phases.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
        let points = |f: &dyn Fn(&crate::scenarios::orders::Phase) -> f64| -> Vec<(f64, f64)> {
            phases.iter().map(|p| (p.offered_rate, f(p))).collect()
        };
        check(
            "orders-latency",
            latency_chart(
                &dir.join("orders-latency.svg"),
                "POST /orders → CONFIRMED (ramp)",
                "offered orders/s",
                &[
                    Series::new("p50", points(&|p| p.to_confirmed.p50_ms)),
                    Series::new("p99", points(&|p| p.to_confirmed.p99_ms)),
                    Series::new("POST p99", points(&|p| p.post.latency.p99_ms)).dashed(),
                ],
                Some(500.0),
            ),
        );
    }
    if let Some(events) = &results.events {
        let points = |f: &dyn Fn(&crate::scenarios::events::EventPoint) -> f64| -> Vec<(f64, f64)> {
            events.points.iter().map(|p| (p.rate, f(p))).collect()
        };
        check(
            "events-latency",
            latency_chart(
                &dir.join("events-latency.svg"),
                "Outbox → consumer latency",
                "offered events/s",
                &[
                    Series::new("p50", points(&|p| p.latency.p50_ms)),
                    Series::new("p99", points(&|p| p.latency.p99_ms)),
                    Series::new("p99.9", points(&|p| p.latency.p999_ms)),
                ],
                Some(50.0),
            ),
        );
    }
    if !results.footprint.is_empty() {
        let rss: Vec<(String, f64)> = results
            .footprint
            .iter()
            .map(|f| {
                (
                    f.service.trim_end_matches("-service").to_owned(),
                    f.idle_rss_mib,
                )
            })
            .collect();
        check(
            "footprint-rss",
            bar_chart(
                &dir.join("footprint-rss.svg"),
                "Idle RSS per service",
                "MiB",
                &rss,
                Some(30.0),
            ),
        );
        let ready: Vec<(String, f64)> = results
            .footprint
            .iter()
            .map(|f| (f.service.trim_end_matches("-service").to_owned(), f.ready_s))
            .collect();
        check(
            "footprint-ready",
            bar_chart(
                &dir.join("footprint-ready.svg"),
                "Start to /readyz 200",
                "seconds",
                &ready,
                Some(1.0),
            ),
        );
    }
    errors
}

/// The ratios of the previous run of the same mode, if its results are in `dir/results`.
pub fn previous_ratios(dir: &Path, mode: &str) -> Option<BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(dir.join("results").join("results.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    if value["meta"]["mode"] != mode {
        return None;
    }
    serde_json::from_value(value["ratios"].clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(gateway_unsent: u64, nginx_unsent: u64) -> Point {
        Point {
            rate: 1000.0,
            share: 0.25,
            service_p99_ratios: vec![1.2],
            service_p99_ratio: Some(1.2),
            nginx: Some(Measured {
                unsent: nginx_unsent,
                ..Measured::default()
            }),
            gateway: Measured {
                unsent: gateway_unsent,
                ..Measured::default()
            },
            p99_ratios: vec![0.8],
            p99_ratio: Some(0.8),
        }
    }

    #[test]
    fn a_fixed_rate_with_requests_left_unsent_is_not_met_whatever_its_p99() {
        let p99 = |p: &Point| p.p99_ratio;
        assert_eq!(fixed_rates_met(&[point(0, 0)], p99, 1.0), (true, 0));
        assert_eq!(
            fixed_rates_met(&[point(0, 0), point(3, 0)], p99, 1.0),
            (false, 3)
        );
        assert_eq!(fixed_rates_met(&[point(0, 2)], p99, 1.0), (false, 2));
    }

    #[test]
    fn each_fixed_rate_target_judges_its_own_ratio_against_its_own_limit() {
        // Service time 1.2×: within issue 29's 1.5×, not within 1.0×.
        let service = |p: &Point| p.service_p99_ratio;
        assert_eq!(fixed_rates_met(&[point(0, 0)], service, 1.5), (true, 0));
        assert_eq!(fixed_rates_met(&[point(0, 0)], service, 1.0), (false, 0));
    }

    #[test]
    fn cpu_per_order_counts_the_system_and_leaves_out_the_generator_and_the_machine() {
        let parts = [
            ("postgres".to_owned(), 6.0),
            ("shop-bench (load generator)".to_owned(), 5.0),
            ("order-service".to_owned(), 2.5),
            ("other".to_owned(), 1.0),
        ];
        assert_eq!(system_cpu_per_order(&parts), Some(8.5));
        assert_eq!(system_cpu_per_order(&[]), None);
    }
}
