//! The one Markdown table of every result file (this binary's and the browser's).

use std::path::PathBuf;

use crate::util::Row;

/// `12345.6` + `changes/s` → `12,346 changes/s`.
pub fn fmt_value(value: f64, unit: &str) -> String {
    if !value.is_finite() {
        return format!("— {unit}");
    }
    let number = if value.abs() >= 1000.0 {
        thousands(value.round() as i64)
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    format!("{number} {unit}")
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn print(files: &[PathBuf]) {
    let mut rows: Vec<Row> = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            eprintln!("(no results in {})", file.display());
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(row) => rows.push(row),
                Err(e) => eprintln!("{}: bad line ({e}): {line}", file.display()),
            }
        }
    }
    println!("| benchmark | size | result | baseline | ratio | target | status |");
    println!("|---|---|---:|---:|---:|---|---|");
    let mut section = String::new();
    let (mut pass, mut miss, mut info) = (0, 0, 0);
    for r in &rows {
        if r.section != section {
            section = r.section.clone();
            println!("| **{section}** | | | | | | |");
        }
        let status = match r.pass {
            Some(true) => {
                pass += 1;
                "pass"
            }
            Some(false) => {
                miss += 1;
                "**miss**"
            }
            None => {
                info += 1;
                "info"
            }
        };
        let baseline = r
            .baseline
            .map(|b| fmt_value(b, &r.unit))
            .unwrap_or_else(|| "—".into());
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}×"))
            .unwrap_or_else(|| "—".into());
        println!(
            "| {} | {} | {} | {baseline} | {ratio} | {} | {status} |",
            escape(&r.metric),
            escape(&r.size),
            fmt_value(r.value, &r.unit),
            escape(&r.target),
        );
    }
    println!();
    println!(
        "{pass} pass, {miss} miss, {info} informational ({} rows).",
        rows.len()
    );
    println!();
    println!("Details:");
    println!();
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        println!("- {} · {} · {}: {}", r.section, r.metric, r.size, r.note);
    }
}

fn escape(s: &str) -> String {
    s.replace('|', "\\|")
}
