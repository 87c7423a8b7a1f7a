//! What a scenario measured and how it is shown: metrics with one value per run for our
//! binary and, in a side-by-side run, for the reference; their medians, min/max and the
//! ratio ours/reference; the goal each is judged by; and the text table and JSON
//! rendering.
//!
//! A metric carries two kinds of goal. `goal` is absolute and judged on our median
//! (errors ≤ 0, peak RSS ≤ 120 MiB, …). `vs_ref` is a ratio ours/reference and is judged
//! on the median of the per-run ratios (run i of ours against run i of the reference,
//! measured back to back). Without a reference in the run, a metric that has a `vs_ref`
//! goal and a Go figure recorded earlier is judged against `vs_ref × recorded` instead,
//! and the table says so.
//!
//! It deliberately does not run anything or decide which scenarios exist.

use std::fmt::Write as _;

/// When and how the `recorded_ref` figures of the scenarios were measured.
pub const RECORDED_GO_WHEN: &str = "measured side by side with ours on 2026-11-29 \
    (shared 2-core VM with other builds running, medians of 5-7 runs)";

/// Which binary a value belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The binary under test (`target/release/plexd-nodeapi` or `$PLEXD_NODEAPI_BIN`).
    Ours,
    /// The reference given with `--reference` (the Go agent).
    Reference,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Reference => "reference",
        }
    }
}

/// How a figure is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
    Info,
}

impl Goal {
    pub fn check(self, v: f64) -> Option<bool> {
        match self {
            Goal::AtLeast(t) => Some(v >= t),
            Goal::AtMost(t) => Some(v <= t),
            Goal::Info => None,
        }
    }

    fn label(self, suffix: &str) -> String {
        match self {
            Goal::AtLeast(t) => format!(">= {}{suffix}", fmt_num(t)),
            Goal::AtMost(t) => format!("<= {}{suffix}", fmt_num(t)),
            Goal::Info => String::new(),
        }
    }

    fn scaled(self, by: f64) -> Goal {
        match self {
            Goal::AtLeast(t) => Goal::AtLeast(t * by),
            Goal::AtMost(t) => Goal::AtMost(t * by),
            Goal::Info => Goal::Info,
        }
    }
}

/// What a metric is and how it is judged.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub unit: &'static str,
    /// Absolute goal on our median.
    pub goal: Goal,
    /// Goal on ours/reference.
    pub vs_ref: Goal,
    /// The Go reference's median recorded earlier (shown and used only without
    /// `--reference`).
    pub recorded_ref: Option<f64>,
    /// A stretch goal: a miss is shown, but as a stretch.
    pub stretch: bool,
}

impl Spec {
    /// A figure shown without a goal.
    pub fn info(name: &str, unit: &'static str) -> Spec {
        Spec {
            name: name.to_string(),
            unit,
            goal: Goal::Info,
            vs_ref: Goal::Info,
            recorded_ref: None,
            stretch: false,
        }
    }

    pub fn goal(mut self, g: Goal) -> Spec {
        self.goal = g;
        self
    }

    pub fn vs_ref(mut self, g: Goal) -> Spec {
        self.vs_ref = g;
        self
    }

    pub fn recorded(mut self, go: f64) -> Spec {
        self.recorded_ref = Some(go);
        self
    }

    pub fn stretch(mut self) -> Spec {
        self.stretch = true;
        self
    }
}

/// One metric's values: `(run, value)` for each side.
#[derive(Debug, Clone)]
pub struct Metric {
    pub spec: Spec,
    pub ours: Vec<(usize, f64)>,
    pub reference: Vec<(usize, f64)>,
}

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(values: impl IntoIterator<Item = f64>) -> Option<Summary> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// How a run's figures are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Our binary alone: absolute goals, ratio goals against the recorded Go figures.
    Absolute,
    /// Beside a reference. The ratio goals are defined against the Go agent, so they
    /// are judged only when the reference is one (`ratio_targets`), not when it is
    /// another build of ours.
    VsReference { ratio_targets: bool },
}

/// The verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// A stretch goal missed.
    StretchMiss,
    /// Nothing to judge (no goal, or no figures to judge it by).
    None,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "ok",
            Verdict::Miss => "MISS",
            Verdict::StretchMiss => "miss (stretch)",
            Verdict::None => "",
        }
    }
}

impl Metric {
    pub fn ours_summary(&self) -> Option<Summary> {
        summarize(self.ours.iter().map(|&(_, v)| v))
    }

    pub fn reference_summary(&self) -> Option<Summary> {
        summarize(self.reference.iter().map(|&(_, v)| v))
    }

    /// ours/reference of each run both sides measured (reference value not zero).
    pub fn paired_ratios(&self) -> Vec<f64> {
        self.ours
            .iter()
            .filter_map(|&(run, ours)| {
                self.reference
                    .iter()
                    .find(|&&(r, _)| r == run)
                    .and_then(|&(_, theirs)| (theirs != 0.0).then(|| ours / theirs))
            })
            .collect()
    }

    /// Median of the paired ratios.
    pub fn ratio(&self) -> Option<Summary> {
        summarize(self.paired_ratios())
    }

    /// The goal that applies in `mode`, with its label.
    fn applicable_goal(&self, mode: Mode) -> (Goal, String) {
        let s = &self.spec;
        let stretch = if s.stretch { " (stretch)" } else { "" };
        if s.vs_ref != Goal::Info {
            match mode {
                Mode::VsReference {
                    ratio_targets: true,
                } => return (s.vs_ref, format!("{}{stretch}", s.vs_ref.label("x"))),
                Mode::VsReference {
                    ratio_targets: false,
                } => {}
                Mode::Absolute => {
                    if let Some(go) = s.recorded_ref {
                        let g = s.vs_ref.scaled(go);
                        return (
                            g,
                            format!(
                                "{}{stretch} (={}x Go rec.)",
                                g.label(""),
                                ratio_of(s.vs_ref)
                            ),
                        );
                    }
                }
            }
        }
        (s.goal, format!("{}{stretch}", s.goal.label("")))
    }

    pub fn verdict(&self, mode: Mode) -> Verdict {
        let s = &self.spec;
        let (goal, _) = self.applicable_goal(mode);
        let on_ratio = s.vs_ref != Goal::Info
            && mode
                == Mode::VsReference {
                    ratio_targets: true,
                };
        let judged = if on_ratio {
            self.ratio().map(|r| r.median)
        } else {
            self.ours_summary().map(|o| o.median)
        };
        match judged.and_then(|v| goal.check(v)) {
            Some(true) => Verdict::Pass,
            Some(false) if s.stretch => Verdict::StretchMiss,
            Some(false) => Verdict::Miss,
            None => Verdict::None,
        }
    }
}

fn ratio_of(g: Goal) -> String {
    match g {
        Goal::AtLeast(t) | Goal::AtMost(t) => fmt_num(t),
        Goal::Info => String::new(),
    }
}

/// Everything one scenario produced.
#[derive(Debug, Default)]
pub struct ScenarioReport {
    pub name: String,
    pub metrics: Vec<Metric>,
    pub notes: Vec<String>,
    /// Our side failed: the scenario failed.
    pub error: Option<String>,
    /// Why the reference has no figures here (not run, or failed), if so.
    pub reference_absent: Option<String>,
    /// The run values are being recorded for (set by the driver).
    pub run: usize,
}

impl ScenarioReport {
    pub fn new(name: &str) -> ScenarioReport {
        ScenarioReport {
            name: name.to_string(),
            ..ScenarioReport::default()
        }
    }

    /// Records `v` for `side` in the current run.
    pub fn push(&mut self, side: Side, spec: Spec, v: f64) {
        let i = match self.metrics.iter().position(|m| m.spec.name == spec.name) {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    spec,
                    ours: Vec::new(),
                    reference: Vec::new(),
                });
                self.metrics.len() - 1
            }
        };
        let run = self.run;
        let m = &mut self.metrics[i];
        match side {
            Side::Ours => m.ours.push((run, v)),
            Side::Reference => m.reference.push((run, v)),
        }
    }

    /// A note, once; prefixed with the side when it is the reference's.
    pub fn note(&mut self, side: Side, n: impl Into<String>) {
        let n = match side {
            Side::Ours => n.into(),
            Side::Reference => format!("reference: {}", n.into()),
        };
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }
}

pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_med(s: Option<Summary>) -> String {
    s.map_or_else(|| "-".to_string(), |s| fmt_num(s.median))
}

fn fmt_range(s: Option<Summary>) -> String {
    s.map_or_else(
        || "-".to_string(),
        |s| format!("{}–{}", fmt_num(s.min), fmt_num(s.max)),
    )
}

/// Lays out rows as aligned columns; columns in `right` are right-aligned.
fn layout(rows: &[Vec<String>], right: &[usize]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                if right.contains(&c) {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    out
}

/// The result table.
pub fn render_table(reports: &[ScenarioReport], mode: Mode) -> String {
    let mut out = String::from("\n");
    let side_by_side = mode != Mode::Absolute;
    if side_by_side {
        let mut rows = vec![[
            "scenario",
            "metric",
            "ours",
            "ours min–max",
            "ref",
            "ref min–max",
            "ours/ref",
            "target",
            "ok",
        ]
        .map(String::from)
        .to_vec()];
        for r in reports {
            error_row(&mut rows, r, 9);
            for m in &r.metrics {
                let (_, target) = m.applicable_goal(mode);
                rows.push(vec![
                    r.name.clone(),
                    format!("{} ({})", m.spec.name, m.spec.unit),
                    fmt_med(m.ours_summary()),
                    fmt_range(m.ours_summary()),
                    fmt_med(m.reference_summary()),
                    fmt_range(m.reference_summary()),
                    m.ratio()
                        .map_or_else(|| "-".into(), |s| format!("{}x", fmt_num(s.median))),
                    target,
                    m.verdict(mode).label().into(),
                ]);
            }
        }
        out.push_str(&layout(&rows, &[2, 3, 4, 5, 6]));
        let _ = writeln!(
            out,
            "ours/ref: median over runs of (ours in run i) / (reference in run i); the two \
             sides run alternately (A B A B …). {}",
            if mode
                == (Mode::VsReference {
                    ratio_targets: true
                })
            {
                "Ratio targets are judged on it, other targets on our median."
            } else {
                "The reference is another build of ours: the ratio targets (defined \
                 against the Go agent) are not judged; other targets on our median."
            }
        );
    } else {
        let mut rows = vec![[
            "scenario",
            "metric",
            "median",
            "min",
            "max",
            "target",
            "Go (recorded)",
            "ok",
        ]
        .map(String::from)
        .to_vec()];
        for r in reports {
            error_row(&mut rows, r, 8);
            for m in &r.metrics {
                let (_, target) = m.applicable_goal(mode);
                let o = m.ours_summary();
                rows.push(vec![
                    r.name.clone(),
                    format!("{} ({})", m.spec.name, m.spec.unit),
                    fmt_med(o),
                    o.map_or_else(|| "-".into(), |s| fmt_num(s.min)),
                    o.map_or_else(|| "-".into(), |s| fmt_num(s.max)),
                    target,
                    m.spec.recorded_ref.map_or_else(String::new, fmt_num),
                    m.verdict(mode).label().into(),
                ]);
            }
        }
        out.push_str(&layout(&rows, &[2, 3, 4, 6]));
        let _ = writeln!(
            out,
            "Go (recorded): the Go reference's medians {}; not measured in this run. \
             Run with --reference PATH for a live side-by-side ratio.",
            RECORDED_GO_WHEN
        );
    }
    for r in reports {
        if let Some(e) = &r.error {
            let _ = writeln!(out, "error: {}: {e}", r.name);
        }
        if side_by_side {
            if let Some(why) = &r.reference_absent {
                let _ = writeln!(out, "note: {}: reference {why}", r.name);
            }
        }
        for n in &r.notes {
            let _ = writeln!(out, "note: {}: {n}", r.name);
        }
    }
    out
}

fn error_row(rows: &mut Vec<Vec<String>>, r: &ScenarioReport, cols: usize) {
    if r.error.is_some() {
        let mut row = vec![String::new(); cols];
        row[0] = r.name.clone();
        row[1] = "ERROR (see below)".into();
        row[cols - 1] = "FAIL".into();
        rows.push(row);
    }
}

fn summary_json(s: Option<Summary>) -> serde_json::Value {
    match s {
        Some(s) => serde_json::json!({"median": s.median, "min": s.min, "max": s.max, "n": s.n}),
        None => serde_json::Value::Null,
    }
}

fn goal_json(g: Goal) -> serde_json::Value {
    match g {
        Goal::AtLeast(t) => serde_json::json!({"at_least": t}),
        Goal::AtMost(t) => serde_json::json!({"at_most": t}),
        Goal::Info => serde_json::Value::Null,
    }
}

/// The machine-readable form of the reports.
pub fn render_json(reports: &[ScenarioReport], mode: Mode, header: serde_json::Value) -> String {
    let scenarios: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let metrics: Vec<serde_json::Value> = r
                .metrics
                .iter()
                .map(|m| {
                    let values = |v: &[(usize, f64)]| v.iter().map(|&(_, x)| x).collect::<Vec<_>>();
                    let ratio_of_medians = match (m.ours_summary(), m.reference_summary()) {
                        (Some(o), Some(t)) if t.median != 0.0 => Some(o.median / t.median),
                        _ => None,
                    };
                    let verdict = match m.verdict(mode) {
                        Verdict::Pass => Some(true),
                        Verdict::Miss | Verdict::StretchMiss => Some(false),
                        Verdict::None => None,
                    };
                    serde_json::json!({
                        "name": m.spec.name, "unit": m.spec.unit,
                        "ours": {"values": values(&m.ours), "summary": summary_json(m.ours_summary())},
                        "reference": {"values": values(&m.reference), "summary": summary_json(m.reference_summary())},
                        "ratio": {"paired": m.paired_ratios(), "summary": summary_json(m.ratio()),
                                  "of_medians": ratio_of_medians},
                        "goal": goal_json(m.spec.goal), "vs_reference": goal_json(m.spec.vs_ref),
                        "go_recorded_earlier": m.spec.recorded_ref, "stretch": m.spec.stretch,
                        "pass": verdict,
                    })
                })
                .collect();
            serde_json::json!({
                "name": r.name, "error": r.error, "reference_absent": r.reference_absent,
                "notes": r.notes, "metrics": metrics,
            })
        })
        .collect();
    let mut doc = header;
    if let Some(o) = doc.as_object_mut() {
        o.insert("scenarios".into(), serde_json::Value::Array(scenarios));
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
