//! Figures, their summaries, and the two outputs: `results.json` and the
//! Markdown table `results.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// What a figure should reach (the targets). Missing a target never
/// fails the benchmark; it is reported.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    pub fn met(self, v: f64) -> bool {
        match self {
            Target::AtLeast(t) => v >= t,
            Target::AtMost(t) => v <= t,
        }
    }

    pub fn text(self) -> String {
        match self {
            Target::AtLeast(t) => format!(">= {t}"),
            Target::AtMost(t) => format!("<= {t}"),
        }
    }
}

/// min / median / max of the repetitions.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

/// The median of an even count is the mean of the middle two.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
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
        min: v[0],
        median,
        max: v[n - 1],
        n,
    })
}

pub fn median(xs: &[f64]) -> f64 {
    summarize(xs).map(|s| s.median).unwrap_or(f64::NAN)
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = xs.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// One row of the results: a ratio or a count, from repetitions of one run.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub target: Option<Target>,
    /// One value per repetition (empty when not measured).
    pub samples: Vec<f64>,
    /// What exactly was measured, in one line for the table.
    pub what: String,
    /// Raw numbers behind the ratio (rates, counts) for the JSON.
    pub detail: Value,
    /// Why it could not be measured (then `samples` is empty).
    pub not_measured: Option<String>,
}

impl Figure {
    pub fn new(name: &str, unit: &'static str, target: Option<Target>, samples: Vec<f64>) -> Self {
        Figure {
            name: name.to_string(),
            unit,
            target,
            samples,
            what: String::new(),
            detail: Value::Null,
            not_measured: None,
        }
    }

    pub fn missing(name: &str, unit: &'static str, target: Option<Target>, why: String) -> Self {
        let mut f = Figure::new(name, unit, target, Vec::new());
        f.not_measured = Some(why);
        f
    }

    pub fn what(mut self, s: impl Into<String>) -> Self {
        self.what = s.into();
        self
    }

    pub fn detail(mut self, v: Value) -> Self {
        self.detail = v;
        self
    }

    pub fn summary(&self) -> Option<Summary> {
        summarize(&self.samples)
    }

    pub fn met(&self) -> Option<bool> {
        Some(self.target?.met(self.summary()?.median))
    }

    pub fn to_json(&self) -> Value {
        let s = self.summary();
        json!({
            "name": self.name,
            "unit": self.unit,
            "measured": self.not_measured.is_none() && s.is_some(),
            "not_measured_reason": self.not_measured,
            "median": s.map(|s| s.median),
            "min": s.map(|s| s.min),
            "max": s.map(|s| s.max),
            "repetitions": s.map(|s| s.n).unwrap_or(0),
            "samples": self.samples,
            "target": self.target.map(Target::text),
            "target_met": self.met(),
            "what": self.what,
            "detail": self.detail,
        })
    }
}

pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 100_000.0 {
        // Thousands separators for counts and rates.
        let mut s = format!("{:.0}", v.round());
        let mut out = String::new();
        let neg = s.starts_with('-');
        if neg {
            s.remove(0);
        }
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if neg {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The machine the numbers come from.
#[derive(Clone, Debug)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    pub fn probe() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        Machine {
            kernel,
            cpu,
            cores,
            load_before: loadavg(),
            load_after: String::new(),
        }
    }
}

/// The 1/5/15-minute load averages: other work on the machine shows here.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub struct Run {
    pub command: String,
    pub started: String,
    pub duration_s: f64,
    pub quick: bool,
    pub machine: Machine,
    pub segwatch_version: String,
    pub figures: Vec<Figure>,
}

impl Run {
    pub fn to_json(&self) -> Value {
        json!({
            "command": self.command,
            "started": self.started,
            "duration_s": self.duration_s,
            "quick": self.quick,
            "segwatch_version": self.segwatch_version,
            "machine": {
                "kernel": self.machine.kernel,
                "cpu": self.machine.cpu,
                "cores": self.machine.cores,
                "load_average_before": self.machine.load_before,
                "load_average_after": self.machine.load_after,
            },
            "method": "every figure comes from this one run; baseline and monitored \
                       repetitions alternate (baseline, monitored, baseline, ...); a ratio \
                       divides each monitored repetition by the mean of the baselines \
                       before and after it; median, min and max are over repetitions",
            "figures": self.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        })
    }

    pub fn to_markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# segwatch benchmark results\n");
        let _ = writeln!(
            s,
            "Command: `{}` · started {} · took {:.0} s{}\n",
            self.command,
            self.started,
            self.duration_s,
            if self.quick { " (quick)" } else { "" }
        );
        let _ = writeln!(
            s,
            "Machine: Linux {}, {}, {} cores; load average {} before, {} after.\n",
            m.kernel, m.cpu, m.cores, m.load_before, m.load_after
        );
        let _ = writeln!(
            s,
            "Baseline and monitored repetitions alternate within this one run; \
             each ratio divides a monitored repetition by the mean of the \
             baselines around it. Median, min and max are over repetitions (n).\n"
        );
        let _ = writeln!(
            s,
            "| figure | median | min | max | n | target | met | what was measured |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for f in &self.figures {
            let target = f.target.map(Target::text).unwrap_or_else(|| "—".into());
            match (f.summary(), &f.not_measured) {
                (Some(x), None) => {
                    let met = match f.met() {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "—",
                    };
                    let unit = if f.unit.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", f.unit)
                    };
                    let _ = writeln!(
                        s,
                        "| `{}` | {}{unit} | {} | {} | {} | {target} | {met} | {} |",
                        f.name,
                        fmt_num(x.median),
                        fmt_num(x.min),
                        fmt_num(x.max),
                        x.n,
                        f.what.replace('|', "\\|"),
                    );
                }
                (_, why) => {
                    let why = why.clone().unwrap_or_else(|| "no samples".into());
                    let _ = writeln!(
                        s,
                        "| `{}` | not measured | | | 0 | {target} | — | {} |",
                        f.name,
                        why.replace('|', "\\|")
                    );
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]).map(|s| s.median), Some(2.0));
        assert_eq!(
            summarize(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median),
            Some(2.5)
        );
        assert!(summarize(&[]).is_none(), "no samples, no summary");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), 50.0);
        assert_eq!(percentile(&xs, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn targets_and_numbers_print_plainly() {
        assert!(Target::AtLeast(0.98).met(0.98));
        assert!(!Target::AtMost(2.0).met(2.01));
        assert_eq!(fmt_num(1_234_567.0), "1,234,567");
        assert_eq!(fmt_num(0.9876), "0.988");
    }
}
