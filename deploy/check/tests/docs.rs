//! The pages that map patterns to code, `docs/patterns.md` and `docs/corrections.md`, cite
//! files, items and tests; this test fails, naming the page and line, as soon as a citation
//! stops being true: a file that does not exist, an item its file does not define, a test
//! function that is not a test in that file, a checklist pattern the page lost, a row whose
//! `shown` column does not match what it cites, or a count in the page's summary that its rows
//! no longer add up to. It also keeps the ADR index complete and both pages linked from
//! `ARCHITECTURE.md` and `README.md`.
//!
//! The citation format (documented at the top of `docs/patterns.md`): a backticked repository
//! path, followed by the backticked names of items in it, separated only by spaces or commas,
//! e.g. `services/order/src/saga.rs` `after`, `before`. In a `.rs` file an item is a name
//! that the file declares as a `fn`, `struct`, `enum`, `trait`, `mod`, `const`, `static`,
//! `type` or `macro_rules!`, or names in an `impl` line; `Type::name` needs both. In any other
//! file an item is a string that occurs in it. A path ending in `/` is a directory. A citation
//! is a test citation when it stands in a table column headed `test`, or right after `test:`;
//! its items must then be functions marked `#[test]` (or `#[tokio::test]`, `#[sqlx::test]`).
//!
//! Plain std only, and no service is started: it reads a few dozen files and runs in
//! milliseconds.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The pages whose citations are checked.
const PAGES: [&str; 2] = ["docs/patterns.md", "docs/corrections.md"];

/// Every pattern ID of the checklist the pattern page was written from (156, in ten themes).
/// The checklist lives outside the repository; its IDs are stable, so they are copied here.
const CHECKLIST_IDS: &[&str] = &[
    "DEC-01", "DEC-02", "DEC-03", "DEC-04", "DEC-05", "DEC-06", "DEC-07", "DEC-08", "DEC-09",
    "DEC-10", "DEC-11", "DEC-12", "DEC-13", "DEC-14", "DEC-15", "DEC-16", "DEC-17", "DEC-18",
    "DEC-19", //
    "DATA-01", "DATA-02", "DATA-03", "DATA-04", "DATA-05", "DATA-06", "DATA-07", "DATA-08",
    "DATA-09", "DATA-10", "DATA-11", "DATA-12", "DATA-13", //
    "COM-01", "COM-02", "COM-03", "COM-04", "COM-05", "COM-06", "COM-07", "COM-08", "COM-09",
    "COM-10", "COM-11", "COM-12", "COM-13", "COM-14", "COM-15", "COM-16", "COM-17", "COM-18",
    "COM-19", "COM-20", "COM-21", "COM-22", "COM-23", "COM-24", //
    "RES-01", "RES-02", "RES-03", "RES-04", "RES-05", "RES-06", "RES-07", "RES-08", "RES-09",
    "RES-10", //
    "SEC-01", "SEC-02", "SEC-03", "SEC-04", "SEC-05", "SEC-06", "SEC-07", "SEC-08", "SEC-09",
    "SEC-10", "SEC-11", "SEC-12", "SEC-13", "SEC-14", "SEC-15", "SEC-16", "SEC-17", "SEC-18",
    "SEC-19", "SEC-20", "SEC-21", "SEC-22", "SEC-23", "SEC-24", "SEC-25", "SEC-26",
    "SEC-27", //
    "OBS-01", "OBS-02", "OBS-03", "OBS-04", "OBS-05", "OBS-06", "OBS-07", "OBS-08", "OBS-09",
    "OBS-10", "OBS-11", "OBS-12", "OBS-13", "OBS-14", "OBS-15", "OBS-16", //
    "TEST-01", "TEST-02", "TEST-03", "TEST-04", "TEST-05", "TEST-06", "TEST-07", "TEST-08",
    "TEST-09", "TEST-10", //
    "DEP-01", "DEP-02", "DEP-03", "DEP-04", "DEP-05", "DEP-06", "DEP-07", "DEP-08", "DEP-09",
    "DEP-10", "DEP-11", "DEP-12", "DEP-13", "DEP-14", "DEP-15", "DEP-16", "DEP-17", "DEP-18",
    "DEP-19", //
    "API-01", "API-02", "API-03", "API-04", "API-05", "API-06", "API-07", "API-08", "API-09",
    "API-10", //
    "OTH-01", "OTH-02", "OTH-03", "OTH-04", "OTH-05", "OTH-06", "OTH-07", "OTH-08",
];

/// How many numbered cautions `docs/corrections.md` answers (the checklist's "should not copy
/// as written" list).
const CORRECTIONS: usize = 10;

/// What the `shown` column of a pattern row may say, and what each value requires of the row.
const SHOWN_CODE_AND_TEST: &str = "code + test";
const SHOWN_CODE: &str = "code";
const SHOWN_NOT: &str = "not shown";

#[test]
fn every_citation_on_the_pattern_and_correction_pages_is_true() {
    let root = repo_root();
    let mut problems = Vec::new();
    for page in PAGES {
        let text = read(&root, page);
        let citations = citations(page, &text, &mut problems);
        if citations.len() < 10 {
            problems.push(format!(
                "{page}: only {} citations found; is the format still the one this test reads?",
                citations.len()
            ));
        }
        for citation in &citations {
            check_citation(&root, citation, &mut problems);
        }
    }
    assert_no_problems(&problems);
}

#[test]
fn every_checklist_pattern_has_a_row_that_says_how_the_system_shows_it() {
    let root = repo_root();
    let page = PAGES[0];
    let text = read(&root, page);
    let mut problems = Vec::new();
    let rows = pattern_rows(page, &text, &mut problems);
    check_pattern_rows(page, &rows, CHECKLIST_IDS, &mut problems);
    check_counts(page, &text, &rows, &mut problems);
    assert_no_problems(&problems);
}

#[test]
fn the_corrections_page_answers_every_caution_with_code() {
    let root = repo_root();
    let page = PAGES[1];
    let text = read(&root, page);
    let mut problems = Vec::new();
    check_corrections(page, &text, CORRECTIONS, &mut problems);
    assert_no_problems(&problems);
}

#[test]
fn the_adr_index_lists_every_record_and_only_records_that_exist() {
    let root = repo_root();
    let mut problems = Vec::new();
    let index = read(&root, "docs/adr/README.md");
    let records: Vec<String> = fs::read_dir(root.join("docs/adr"))
        .expect("docs/adr is readable")
        .map(|entry| entry.expect("a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md") && name != "README.md")
        .collect();
    assert!(records.len() >= 15, "docs/adr holds only {records:?}");
    check_adr_index(&index, &records, &mut problems);
    assert_no_problems(&problems);
}

#[test]
fn the_architecture_map_and_the_readme_link_both_pages() {
    let root = repo_root();
    let mut problems = Vec::new();
    for (file, prefix) in [("ARCHITECTURE.md", ""), ("README.md", "")] {
        let text = read(&root, file);
        for page in PAGES {
            if !text.contains(&format!("]({prefix}{page})")) {
                problems.push(format!("{file}: no link to {page}"));
            }
        }
    }
    assert_no_problems(&problems);
}

/// `docs/tour.md` is generated (`make tour`) but committed: every relative link it makes to
/// the code must still lead to a file or directory, and the generated trace must still show
/// the six services an order passes through.
#[test]
fn the_tour_links_only_to_what_exists_and_its_trace_spans_six_services() {
    let root = repo_root();
    let tour = read(&root, "docs/tour.md");
    let mut problems = relative_links(&tour)
        .into_iter()
        .filter(|target| !root.join("docs").join(target).exists())
        .map(|target| format!("docs/tour.md: a link to {target}, which does not exist"))
        .collect::<Vec<_>>();
    for service in [
        "gateway",
        "order-service",
        "catalog-service",
        "inventory-service",
        "payment-service",
        "notification-service",
    ] {
        if !tour
            .lines()
            .any(|line| line.starts_with("| ") && line.contains(&format!(" | {service} | ")))
        {
            problems.push(format!("docs/tour.md: the trace has no span of {service}"));
        }
    }
    assert!(
        !relative_links("[a](../b.rs) [c](https://d) [e](f.md#g)").contains(&"https://d"),
        "relative_links keeps only relative targets"
    );
    assert_no_problems(&problems);
}

/// Every committed Markdown file (READMEs, ADRs, docs): each relative link must still lead to
/// a file or directory, so moving code (a module folded into a shared crate, a renamed test
/// file) cannot leave a page pointing at nothing. The files are the ones git tracks, so build
/// output and local data are never read.
#[test]
fn every_relative_link_in_the_markdown_leads_to_something_that_exists() {
    let root = repo_root();
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z", "--", "*.md"])
        .current_dir(&root)
        .output()
        .expect("git ls-files runs");
    assert!(listed.status.success(), "git ls-files failed");
    let mut problems = Vec::new();
    let mut pages = 0;
    for page in String::from_utf8_lossy(&listed.stdout).split('\0') {
        if page.is_empty() {
            continue;
        }
        pages += 1;
        let text = read(&root, page);
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for target in relative_links(&text) {
            // A link is a path when it has no spaces (prose like "[a](b)" in code spans aside)
            // and is not a mail or in-page anchor.
            if target.contains(' ') || target.starts_with("mailto:") {
                continue;
            }
            if !root.join(dir).join(target).exists() {
                problems.push(format!("{page}: a link to {target}, which does not exist"));
            }
        }
    }
    assert!(
        pages > 20,
        "found only {pages} Markdown files: is this a git checkout?"
    );
    assert_no_problems(&problems);
}

/// The targets of `[text](target)` links that are relative paths, without their `#anchor`.
fn relative_links(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .map(|target| target.split('#').next().unwrap_or(target))
        .filter(|target| !target.is_empty() && !target.contains("://"))
        .collect()
}

/// The check itself, on pages broken on purpose: each kind of untrue citation is reported with
/// its page and line, and a good citation is not.
#[test]
fn the_check_reports_each_kind_of_broken_citation_and_a_lost_pattern() {
    let root = repo_root();
    let page = "broken.md";
    let text = "\
# A page

The saga's decisions: `services/order/src/saga.rs` `after`, `before`.
A file that is not there: `services/order/src/sagas.rs` `after`.
An item the file does not define: `services/order/src/saga.rs` `afterwards`.
test: `services/order/src/saga.rs` `after`
test: `services/order/src/saga.rs` `the_happy_path_goes_forward_step_by_step_to_confirmed`
A string a YAML file lacks: `deploy/helm/shop/values.yaml` `no such setting anywhere`.
- **Tests:** `services/order/src/saga.rs` `names_round_trip`; `services/order/src/saga.rs` `Step`

| ID | pattern | shown | code | test |
|---|---|---|---|---|
| **DEC-01** | one | code + test | `services/order/src/saga.rs` `Step` | `services/order/src/saga.rs` `names_round_trip` |
| **DEC-02** | two | code + test | `services/order/src/saga.rs` `Step` | |
| **DEC-03** | three | code | | |
| **DEC-05** | five | maybe | | |
| **DEC-05** | five again | not shown | | |
";
    let mut problems = Vec::new();
    for citation in citations(page, text, &mut problems) {
        check_citation(&root, &citation, &mut problems);
    }
    let rows = pattern_rows(page, text, &mut problems);
    check_pattern_rows(
        page,
        &rows,
        &["DEC-01", "DEC-02", "DEC-03", "DEC-04", "DEC-05"],
        &mut problems,
    );
    let expected = [
        "broken.md:4: `services/order/src/sagas.rs` does not exist",
        "broken.md:5: `services/order/src/saga.rs` does not define `afterwards`",
        "broken.md:6: `services/order/src/saga.rs` has no test function `after`",
        "broken.md:8: `deploy/helm/shop/values.yaml` does not contain `no such setting anywhere`",
        "broken.md:9: `services/order/src/saga.rs` has no test function `Step`",
        "broken.md:14: DEC-02 is shown by code and test, but the row cites no test",
        "broken.md:15: DEC-03 is shown by code, but the row cites no code",
        "broken.md:16: DEC-05 says it is shown by `maybe`",
        "broken.md:17: DEC-05 has a second row (the first is on line 16)",
        "broken.md:17: DEC-05 is not shown, but the row does not say why",
        "broken.md: DEC-04 has no row",
    ];
    let found: BTreeSet<&str> = problems.iter().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = expected.into_iter().collect();
    assert_eq!(
        found, wanted,
        "the check did not report exactly the broken citations"
    );

    let mut adr = Vec::new();
    check_adr_index(
        "| [0001](0001-a.md) | a |\n| [0003](0003-c.md) | c |",
        &["0001-a.md".to_owned(), "0002-b.md".to_owned()],
        &mut adr,
    );
    assert_eq!(
        adr,
        [
            "docs/adr/README.md: 0002-b.md is not listed",
            "docs/adr/README.md: lists 0003-c.md, which does not exist",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Reading the pages

/// One cited path and the items named after it, where it was found, and whether it cites tests.
#[derive(Debug)]
struct Citation {
    page: String,
    line: usize,
    path: String,
    items: Vec<String>,
    test: bool,
}

/// A pattern row: the first cell of a table row is a pattern ID.
#[derive(Debug)]
struct PatternRow {
    id: String,
    line: usize,
    shown: Option<String>,
    cites_code: bool,
    cites_test: bool,
    /// The row's sentence starts with "Partly".
    partly: bool,
    text: String,
}

/// A line of a page, outside fenced code blocks, split into the cells of a table row (with their
/// column headers) or kept whole.
struct Segment<'a> {
    line: usize,
    column: Option<String>,
    text: &'a str,
    first_cell: bool,
}

fn segments<'a>(page: &str, text: &'a str, problems: &mut Vec<String>) -> Vec<Segment<'a>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut fenced = false;
    let mut header: Option<Vec<String>> = None;
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        let number = index + 1;
        index += 1;
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.matches('`').count() % 2 == 1 {
            problems.push(format!("{page}:{number}: unbalanced backticks"));
            continue;
        }
        if !line.trim_start().starts_with('|') {
            header = None;
            out.push(Segment {
                line: number,
                column: None,
                text: line,
                first_cell: false,
            });
            continue;
        }
        let cells = cells(line);
        if lines.get(index).is_some_and(|next| is_separator(next)) {
            header = Some(
                cells
                    .iter()
                    .map(|cell| cell.trim().to_lowercase())
                    .collect(),
            );
            index += 1;
            continue;
        }
        for (column, cell) in cells.into_iter().enumerate() {
            out.push(Segment {
                line: number,
                column: header.as_ref().and_then(|names| names.get(column).cloned()),
                text: cell,
                first_cell: column == 0,
            });
        }
    }
    out
}

/// The cells of a table row: split at `|` outside code spans, without the outer empty ones.
fn cells(line: &str) -> Vec<&str> {
    let line = line.trim();
    let mut cells = Vec::new();
    let mut in_code = false;
    let mut start = 0;
    for (at, c) in line.char_indices() {
        match c {
            '`' => in_code = !in_code,
            '|' if !in_code && !line[..at].ends_with('\\') => {
                cells.push(&line[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    cells.push(&line[start..]);
    if cells.first().is_some_and(|cell| cell.trim().is_empty()) {
        cells.remove(0);
    }
    if cells.last().is_some_and(|cell| cell.trim().is_empty()) {
        cells.pop();
    }
    cells
}

fn is_separator(line: &str) -> bool {
    let line = line.trim();
    line.starts_with('|')
        && cells(line).iter().all(|cell| {
            let cell = cell.trim().trim_matches(':');
            !cell.is_empty() && cell.chars().all(|c| c == '-')
        })
}

/// Text and code spans alternate: even indices are text, odd ones code.
fn spans(text: &str) -> Vec<&str> {
    text.split('`').collect()
}

/// Extensions that make a name without `/` a file at the repository's root (`Makefile` and
/// `Dockerfile` need none).
const ROOT_FILE_EXTENSIONS: [&str; 10] = [
    "md", "toml", "yml", "yaml", "json", "rs", "sh", "sql", "proto", "lock",
];

/// A repository path: `a/b.rs`, `a/b/` (a directory), `deploy/docker/Dockerfile`, `.ci/run`,
/// or a root file such as `docker-compose.yml` or `Makefile`.
fn is_path(span: &str) -> bool {
    let plain = !span.is_empty()
        && span
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !plain || span.starts_with('/') || span.starts_with("./") || span.starts_with("../") {
        return false;
    }
    let last = span.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let capitalised = last.starts_with(|c: char| c.is_ascii_uppercase());
    if span.contains('/') {
        span.ends_with('/') || last.contains('.') || capitalised || span.starts_with('.')
    } else {
        matches!(span, "Makefile" | "Dockerfile")
            || span
                .rsplit_once('.')
                .is_some_and(|(stem, ext)| !stem.is_empty() && ROOT_FILE_EXTENSIONS.contains(&ext))
    }
}

/// Text between two code spans that keeps them in one citation.
fn is_joiner(text: &str) -> bool {
    text.chars().all(|c| c.is_whitespace() || c == ',')
}

/// A `test:` label right before a path makes its citation a test citation.
fn labelled_test(before: &str) -> bool {
    before
        .trim_end_matches(|c: char| c.is_whitespace() || c == '*')
        .to_lowercase()
        .ends_with("test:")
}

/// A line (list item) that starts with `Test:` or `Tests:` cites only tests.
fn test_line(text: &str) -> bool {
    let start = text
        .trim_start()
        .trim_start_matches(['-', '*', ' '])
        .to_lowercase();
    start.starts_with("test:") || start.starts_with("tests:")
}

fn citations(page: &str, text: &str, problems: &mut Vec<String>) -> Vec<Citation> {
    let mut out = Vec::new();
    for segment in segments(page, text, problems) {
        let column_is_test = segment
            .column
            .as_deref()
            .is_some_and(|column| column.starts_with("test"))
            || test_line(segment.text);
        let spans = spans(segment.text);
        let mut index = 1;
        while index < spans.len() {
            if !is_path(spans[index]) {
                index += 2;
                continue;
            }
            let mut citation = Citation {
                page: page.to_owned(),
                line: segment.line,
                path: spans[index].to_owned(),
                items: Vec::new(),
                test: column_is_test || labelled_test(spans[index - 1]),
            };
            index += 2;
            while index < spans.len() && is_joiner(spans[index - 1]) && !is_path(spans[index]) {
                citation.items.push(spans[index].to_owned());
                index += 2;
            }
            out.push(citation);
        }
    }
    out
}

fn pattern_rows(page: &str, text: &str, problems: &mut Vec<String>) -> Vec<PatternRow> {
    let segments = segments(page, text, problems);
    let mut rows: Vec<PatternRow> = Vec::new();
    for segment in &segments {
        if segment.first_cell {
            let first = segment.text.trim().trim_matches('*');
            let id = first
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches('*');
            if is_pattern_id(id) {
                rows.push(PatternRow {
                    id: id.to_owned(),
                    line: segment.line,
                    shown: None,
                    cites_code: false,
                    cites_test: false,
                    partly: false,
                    text: String::new(),
                });
            }
            continue;
        }
        let Some(row) = rows.last_mut().filter(|row| row.line == segment.line) else {
            continue;
        };
        row.text.push_str(segment.text);
        row.text.push('|');
        if segment.column.as_deref() == Some("shown") {
            row.shown = Some(segment.text.trim().to_lowercase());
        }
        if segment.column.as_deref() == Some("in this system") {
            row.partly = segment.text.trim().starts_with("Partly");
        }
        let mut ignored = Vec::new();
        let column_is_test = segment
            .column
            .as_deref()
            .is_some_and(|column| column.starts_with("test"));
        for citation in citations(page, segment.text, &mut ignored) {
            if citation.test || column_is_test {
                row.cites_test |= !citation.items.is_empty();
            } else {
                row.cites_code = true;
            }
        }
    }
    rows
}

fn is_pattern_id(word: &str) -> bool {
    let Some((theme, number)) = word.split_once('-') else {
        return false;
    };
    theme.len() >= 2
        && theme.chars().all(|c| c.is_ascii_uppercase())
        && number.len() == 2
        && number.chars().all(|c| c.is_ascii_digit())
}

fn check_pattern_rows(page: &str, rows: &[PatternRow], ids: &[&str], problems: &mut Vec<String>) {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for row in rows {
        if let Some(line) = first.get(row.id.as_str()) {
            problems.push(format!(
                "{page}:{}: {} has a second row (the first is on line {line})",
                row.line, row.id
            ));
        } else {
            first.insert(&row.id, row.line);
        }
        let where_ = format!("{page}:{}: {}", row.line, row.id);
        match row.shown.as_deref() {
            Some(SHOWN_CODE_AND_TEST) => {
                if !row.cites_code {
                    problems.push(format!(
                        "{where_} is shown by code and test, but the row cites no code"
                    ));
                }
                if !row.cites_test {
                    problems.push(format!(
                        "{where_} is shown by code and test, but the row cites no test"
                    ));
                }
            }
            Some(SHOWN_CODE) => {
                if !row.cites_code {
                    problems.push(format!(
                        "{where_} is shown by code, but the row cites no code"
                    ));
                }
            }
            Some(SHOWN_NOT) => {
                let said = row
                    .text
                    .split('|')
                    .filter(|cell| !cell.trim().eq_ignore_ascii_case(SHOWN_NOT))
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ");
                if !said.contains("Not shown") && !said.contains("not shown") {
                    problems.push(format!(
                        "{where_} is not shown, but the row does not say why"
                    ));
                }
            }
            Some(other) => problems.push(format!("{where_} says it is shown by `{other}`")),
            None => problems.push(format!("{where_} has no `shown` column")),
        }
    }
    for id in ids {
        if !first.contains_key(id) {
            problems.push(format!("{page}: {id} has no row"));
        }
    }
    for row in rows {
        if !ids.contains(&row.id.as_str()) && !row.id.starts_with("BEY-") {
            problems.push(format!(
                "{page}:{}: {} is not a checklist ID (patterns beyond the checklist are BEY-nn)",
                row.line, row.id
            ));
        }
    }
}

/// The page's summary sentence states the counts its rows add up to.
fn check_counts(page: &str, text: &str, rows: &[PatternRow], problems: &mut Vec<String>) {
    let checklist: Vec<&PatternRow> = rows
        .iter()
        .filter(|row| !row.id.starts_with("BEY-"))
        .collect();
    let shown = |value: &str| {
        checklist
            .iter()
            .filter(|row| row.shown.as_deref() == Some(value))
            .count()
    };
    let partly = checklist
        .iter()
        .filter(|row| row.partly && row.shown.as_deref() != Some(SHOWN_NOT))
        .count();
    let beyond = rows.len() - checklist.len();
    let summary = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for claim in [
        format!("of the {} checklist patterns,", checklist.len()),
        format!(
            "{} are shown by code and a test,",
            shown(SHOWN_CODE_AND_TEST)
        ),
        format!("{} by code only,", shown(SHOWN_CODE)),
        format!("{} are not shown;", shown(SHOWN_NOT)),
        format!("{partly} of the shown ones are shown only in part"),
        format!("adds {beyond} patterns"),
    ] {
        if !summary.contains(&claim) {
            problems.push(format!("{page}: the counts do not say \"{claim}\""));
        }
    }
}

/// Each caution is a `## <n>.` section with at least one citation of this system's code.
fn check_corrections(page: &str, text: &str, count: usize, problems: &mut Vec<String>) {
    let mut sections: BTreeMap<usize, (usize, usize)> = BTreeMap::new(); // n -> (line, citations)
    let mut current = None;
    let mut ignored = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("## ") {
            current = rest
                .split_once('.')
                .and_then(|(number, _)| number.trim().parse::<usize>().ok());
            if let Some(number) = current {
                sections.insert(number, (index + 1, 0));
            }
            continue;
        }
        if let Some(number) = current {
            let found = citations(page, line, &mut ignored).len();
            if let Some(section) = sections.get_mut(&number) {
                section.1 += found;
            }
        }
    }
    for number in 1..=count {
        match sections.get(&number) {
            None => problems.push(format!(
                "{page}: caution {number} has no `## {number}.` section"
            )),
            Some((line, 0)) => problems.push(format!(
                "{page}:{line}: caution {number} cites nothing in this system"
            )),
            Some(_) => {}
        }
    }
}

fn check_adr_index(index: &str, records: &[String], problems: &mut Vec<String>) {
    for record in records {
        if !index.contains(&format!("]({record})")) {
            problems.push(format!("docs/adr/README.md: {record} is not listed"));
        }
    }
    for link in index.split("](").skip(1) {
        let target = link.split(')').next().unwrap_or("");
        if target.ends_with(".md") && !records.iter().any(|record| record == target) {
            problems.push(format!(
                "docs/adr/README.md: lists {target}, which does not exist"
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking one citation against the repository

fn check_citation(root: &Path, citation: &Citation, problems: &mut Vec<String>) {
    let at = format!("{}:{}", citation.page, citation.line);
    let path = &citation.path;
    let full = root.join(path);
    if path.ends_with('/') {
        if !full.is_dir() {
            problems.push(format!("{at}: `{path}` is not a directory"));
        } else if !citation.items.is_empty() {
            problems.push(format!("{at}: `{path}` is a directory; items need a file"));
        }
        return;
    }
    let Ok(source) = fs::read_to_string(&full) else {
        problems.push(format!("{at}: `{path}` does not exist"));
        return;
    };
    if citation.test && citation.items.is_empty() {
        problems.push(format!(
            "{at}: a test citation of `{path}` names no test function"
        ));
    }
    let rust = path.ends_with(".rs");
    for item in &citation.items {
        if citation.test {
            if !rust || !is_test_fn(&source, item) {
                problems.push(format!("{at}: `{path}` has no test function `{item}`"));
            }
        } else if rust {
            if !is_rust_path(item) {
                problems.push(format!(
                    "{at}: `{item}` (after `{path}`) is not an item name"
                ));
            } else if !item.split("::").all(|name| defines(&source, name)) {
                problems.push(format!("{at}: `{path}` does not define `{item}`"));
            }
        } else if !source.contains(item.as_str()) {
            problems.push(format!("{at}: `{path}` does not contain `{item}`"));
        }
    }
}

fn is_rust_path(item: &str) -> bool {
    item.split("::").all(|name| {
        name.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_alphanumeric() || c == '_')
    })
}

const DECLARATION_KEYWORDS: [&str; 9] = [
    "fn", "struct", "enum", "trait", "mod", "const", "static", "type", "union",
];

/// The words of a line of code (comments dropped), `macro_rules!` kept as one word.
fn words(line: &str) -> Vec<&str> {
    let code = match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    };
    code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '!'))
        .filter(|word| !word.is_empty())
        .collect()
}

/// Whether `source` declares `name`: `<keyword> name` for an item, `macro_rules! name`, or an
/// `impl` line naming it.
fn defines(source: &str, name: &str) -> bool {
    source.lines().any(|line| {
        let words = words(line);
        let declared = words.windows(2).any(|pair| {
            pair[1] == name
                && (DECLARATION_KEYWORDS.contains(&pair[0]) || pair[0] == "macro_rules!")
        });
        let implemented = matches!(words.first(), Some(&"impl") | Some(&"unsafe"))
            && words.contains(&"impl")
            && words.contains(&name);
        declared || implemented
    })
}

/// Whether `source` has `fn name` under a `#[test]`, `#[tokio::test…]` or `#[sqlx::test…]`
/// attribute (other attributes and comments may stand between them).
fn is_test_fn(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    lines.iter().enumerate().any(|(index, line)| {
        let words = words(line);
        let is_fn = words.windows(2).any(|pair| pair == ["fn", name]);
        is_fn
            && lines[..index]
                .iter()
                .rev()
                .map(|line| line.trim())
                .take_while(|line| line.starts_with("#[") || line.starts_with("//"))
                .any(|line| {
                    line.starts_with("#[test")
                        || line.starts_with("#[tokio::test")
                        || line.starts_with("#[sqlx::test")
                })
    })
}

// ---------------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(root: &Path, file: &str) -> String {
    fs::read_to_string(root.join(file)).unwrap_or_else(|error| panic!("{file}: {error}"))
}

fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
