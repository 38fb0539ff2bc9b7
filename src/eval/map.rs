//! The quality map of one model: the reports of several files (one domain each) side by side,
//! each method's length-balanced accuracy per file and the average over the domains.
//!
//! A file's domain is the first word of its name (`code-dev` and `code-mbpp-dev` are both `code`),
//! and each domain counts once in the average: through its file with the most items.
//!
//! Length-balanced accuracy is the one figure every kind of file has (preference pairs, and the
//! passing × failing pairs of a ranking task): the mean of the accuracy where the better answer is
//! longer and where it is shorter, so 0.5 for any rule that looks only at length.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::metrics::Estimate;
use super::plot;
use super::Report;

/// `z` of a two-sided 95% normal interval.
const Z95: f64 = 1.959_963_984_540_054;

/// One method's row of the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapRow {
    /// The method's name.
    pub method: String,
    /// Its length-balanced accuracy in each domain, in the map's domain order (`None`: the method
    /// was not run there, or has no such figure).
    pub domains: Vec<Option<Estimate>>,
    /// The mean over the domains (the columns of [`Map::averaged`]), when each of them has a
    /// figure. Its interval treats the domains as independent: the half-width is
    /// `1.96 · √(Σ se²) / k`, each `se` read off the domain's own 95% interval as `(hi − lo) / 3.92`.
    pub average: Option<Estimate>,
}

/// The map of one model over several domains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Map {
    /// The model's id.
    pub model: String,
    /// The columns: each data file's name without `.jsonl`, in the order given.
    pub domains: Vec<String>,
    /// The columns the average is taken over: one per domain, the file with the most items
    /// (the first of equals).
    #[serde(default)]
    pub averaged: Vec<String>,
    /// One row per method, in the order of the first report, then the methods only later
    /// reports have.
    pub rows: Vec<MapRow>,
}

impl Map {
    /// The map of `reports` (one per domain, all of one model).
    pub fn of(reports: &[Report]) -> Map {
        let domains: Vec<String> = reports.iter().map(|r| domain_name(&r.data)).collect();
        // One column per domain: its file with the most items, the first of equals.
        let mut chosen: Vec<usize> = Vec::new();
        for (i, name) in domains.iter().enumerate() {
            match (chosen.iter_mut()).find(|j| domain_of(&domains[**j]) == domain_of(name)) {
                Some(j) if reports[*j].items < reports[i].items => *j = i,
                Some(_) => {}
                None => chosen.push(i),
            }
        }
        chosen.sort_unstable();
        let mut methods: Vec<String> = Vec::new();
        for report in reports {
            for m in &report.methods {
                if !methods.contains(&m.method) {
                    methods.push(m.method.clone());
                }
            }
        }
        let rows = methods
            .into_iter()
            .map(|method| {
                let domains: Vec<Option<Estimate>> = reports
                    .iter()
                    .map(|r| {
                        let m = r.methods.iter().find(|m| m.method == method)?;
                        m.length?.balanced
                    })
                    .collect();
                let average = average(chosen.iter().map(|&i| domains[i]));
                MapRow {
                    method,
                    domains,
                    average,
                }
            })
            .collect();
        Map {
            model: reports.first().map(|r| r.model.clone()).unwrap_or_default(),
            averaged: chosen.iter().map(|&i| domains[i].clone()).collect(),
            domains,
            rows,
        }
    }

    /// The map as a plain-text table: a row per method, a column per domain and the average, and
    /// the average's difference from the paper's `endo`.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "map · {} · length-balanced accuracy (0.5: length alone)",
            self.model
        );
        let width = (self.rows.iter())
            .map(|r| r.method.chars().count())
            .max()
            .unwrap_or(0)
            .max(16);
        let column = 20;
        let _ = write!(out, "{:<width$}", "method");
        for domain in self.domains.iter().map(String::as_str).chain(["average"]) {
            let _ = write!(out, "  {:<column$}", truncate(domain, column));
        }
        let _ = writeln!(out, "  {:>7}", "Δ endo");
        let endo = (self.rows.iter())
            .find(|r| r.method == "endo")
            .and_then(|r| r.average);
        let cell = |e: &Option<Estimate>| match e {
            Some(e) => format!("{:.3} [{:.2}, {:.2}]", e.value, e.lo, e.hi),
            None => "-".into(),
        };
        for row in &self.rows {
            let _ = write!(out, "{:<width$}", row.method);
            for e in row.domains.iter().chain([&row.average]) {
                let _ = write!(out, "  {:<column$}", cell(e));
            }
            let delta = match (row.average, endo) {
                (Some(a), Some(b)) => format!("{:+.3}", a.value - b.value),
                _ => "-".into(),
            };
            let _ = writeln!(out, "  {delta:>7}");
        }
        let _ = write!(
            out,
            "average: the mean over the domains ({}: a file's domain is its name's first word, \
             counted once, by its file with the most items); its interval treats them as \
             independent",
            self.averaged.join(", ")
        );
        out
    }

    /// The map as the estimates figure of `--plot`: one row per method and domain, then the
    /// method's average.
    pub fn figures(&self) -> plot::Figures {
        let methods = self
            .rows
            .iter()
            .flat_map(|row| {
                let names = self.domains.iter().map(String::as_str).chain(["average"]);
                names
                    .zip(row.domains.iter().chain([&row.average]))
                    .map(|(domain, estimate)| plot::MethodFigure {
                        name: format!("{} · {domain}", row.method),
                        roc: None,
                        differences: None,
                        estimates: estimate.iter().map(|&e| ("length-balanced", e)).collect(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        plot::Figures {
            title: format!("map · {}", self.model),
            baseline: Some(("length alone".into(), 0.5)),
            methods,
        }
    }
}

/// A data file's domain name: its file name without `.jsonl` (`chat-dev`).
pub fn domain_name(data: &str) -> String {
    let name = std::path::Path::new(data)
        .file_name()
        .map_or_else(|| data.to_owned(), |n| n.to_string_lossy().into_owned());
    name.strip_suffix(".jsonl").unwrap_or(&name).to_owned()
}

fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// A file's domain: the first word of its name (`code` for `code-mbpp-dev`).
pub fn domain_of(name: &str) -> &str {
    name.split(['-', '_', '.']).next().unwrap_or(name)
}

/// The mean of the domains' figures with the interval of [`MapRow::average`]; `None` unless every
/// domain has one.
fn average(domains: impl Iterator<Item = Option<Estimate>>) -> Option<Estimate> {
    let figures: Vec<Estimate> = domains.collect::<Option<_>>()?;
    if figures.is_empty() {
        return None;
    }
    let k = figures.len() as f64;
    let value = figures.iter().map(|e| e.value).sum::<f64>() / k;
    let variance: f64 = figures
        .iter()
        .map(|e| ((e.hi - e.lo) / (2.0 * Z95)).powi(2))
        .sum();
    let half = Z95 * variance.sqrt() / k;
    Some(Estimate {
        value,
        lo: value - half,
        hi: value + half,
        n: figures.iter().map(|e| e.n).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::LengthSplit;
    use crate::eval::MethodReport;

    fn report(data: &str, methods: &[(&str, f64)]) -> Report {
        Report {
            model: "m".into(),
            reference_model: None,
            data: data.into(),
            kind: "preference".into(),
            items: 10,
            principle: None,
            baseline_per_token: 0.0,
            random_pass_at_1: None,
            methods: methods
                .iter()
                .map(|&(name, value)| MethodReport {
                    method: name.into(),
                    accuracy: None,
                    length: Some(LengthSplit {
                        chosen_longer: None,
                        chosen_shorter: None,
                        balanced: Some(Estimate {
                            value,
                            lo: value - 0.1,
                            hi: value + 0.1,
                            n: 10,
                        }),
                    }),
                    pass_at_1: None,
                    auc: None,
                    scored: 10,
                    failed: 0,
                    pass_seconds: 0.0,
                    pass_tokens: 0,
                })
                .collect(),
            intervals: String::new(),
            wall_seconds: 0.0,
            resumed: 0,
            figures: Vec::new(),
        }
    }

    #[test]
    fn the_average_needs_every_domain_and_its_interval_narrows_with_more() {
        let map = Map::of(&[
            report(
                "evaldata/chat-dev.jsonl",
                &[("endo", 0.5), ("endo_lc", 0.6)],
            ),
            report("/x/safety-dev.jsonl", &[("endo", 0.7)]),
        ]);
        assert_eq!(map.domains, ["chat-dev", "safety-dev"]);
        let endo = &map.rows[0];
        let average = endo.average.expect("both domains");
        assert!((average.value - 0.6).abs() < 1e-12);
        // Two independent halves of width 0.1 average to a half-width of 0.1/√2.
        assert!((average.hi - average.value - 0.1 / 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(map.rows[1].method, "endo_lc");
        assert_eq!(map.rows[1].domains[1], None);
        assert_eq!(map.rows[1].average, None, "a domain without a figure");
        let table = map.table();
        assert!(
            table.contains("chat-dev") && table.contains("+0.000"),
            "{table}"
        );
        assert_eq!(map.figures().methods.len(), 2 * 3);
    }

    #[test]
    fn a_domain_counts_once_in_the_average_through_its_file_with_the_most_items() {
        let mut mbpp = report("evaldata/code-mbpp-dev.jsonl", &[("endo", 0.9)]);
        mbpp.items = 26;
        let mut humaneval = report("evaldata/code-dev.jsonl", &[("endo", 0.5)]);
        humaneval.items = 40;
        let chat = report("evaldata/chat-dev.jsonl", &[("endo", 0.3)]);
        let map = Map::of(&[mbpp, chat, humaneval]);
        assert_eq!(map.domains, ["code-mbpp-dev", "chat-dev", "code-dev"]);
        assert_eq!(map.averaged, ["chat-dev", "code-dev"]);
        let average = map.rows[0].average.expect("both domains");
        assert!((average.value - 0.4).abs() < 1e-12, "{average:?}");
        assert!(
            map.table().contains("(chat-dev, code-dev:"),
            "{}",
            map.table()
        );
    }

    #[test]
    fn a_files_domain_is_the_first_word_of_its_name() {
        assert_eq!(domain_of("code-mbpp-dev"), "code");
        assert_eq!(domain_of("prefs_dev"), "prefs");
        assert_eq!(domain_of("chat"), "chat");
    }
}
