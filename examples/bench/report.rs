//! One scenario's outcome, as table rows and as one JSON object.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// One scenario's outcome: rows for the table, one JSON object, and whether its correctness
/// checks held.
pub(crate) struct Report {
    name: String,
    rows: Vec<Row>,
    pub(crate) json: Value,
    targets: Vec<Value>,
    pub(crate) sound: bool,
}

struct Row {
    measure: String,
    value: String,
    target: Option<(String, bool)>,
}

impl Report {
    pub(crate) fn new(name: &str) -> Report {
        Report {
            name: name.to_owned(),
            rows: Vec::new(),
            json: json!({ "scenario": name }),
            targets: Vec::new(),
            sound: true,
        }
    }

    pub(crate) fn row(&mut self, measure: &str, value: impl Into<String>) {
        self.rows.push(Row {
            measure: measure.to_owned(),
            value: value.into(),
            target: None,
        });
    }

    /// A row with a target: `held` decides the verdict printed next to it.
    pub(crate) fn target(
        &mut self,
        measure: &str,
        value: impl Into<String>,
        target: &str,
        held: bool,
    ) {
        let value = value.into();
        self.targets.push(json!({
            "measure": measure, "value": value, "target": target, "held": held,
        }));
        self.rows.push(Row {
            measure: measure.to_owned(),
            value,
            target: Some((target.to_owned(), held)),
        });
    }

    /// A correctness check: failing it fails the run.
    pub(crate) fn check(
        &mut self,
        measure: &str,
        value: impl Into<String>,
        target: &str,
        held: bool,
    ) {
        self.sound &= held;
        self.target(measure, value, target, held);
    }

    pub(crate) fn set(&mut self, key: &str, value: Value) {
        self.json[key] = value;
    }

    pub(crate) fn finish(mut self) -> Report {
        self.json["targets"] = Value::Array(std::mem::take(&mut self.targets));
        self.json["correct"] = json!(self.sound);
        self
    }
}

pub(crate) fn print_table(reports: &[Report]) {
    let w_measure = reports
        .iter()
        .flat_map(|r| r.rows.iter().map(|row| row.measure.chars().count()))
        .max()
        .unwrap_or(0);
    let w_value = reports
        .iter()
        .flat_map(|r| r.rows.iter().map(|row| row.value.chars().count()))
        .max()
        .unwrap_or(0)
        .min(48);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<w_measure$}  {:<w_value$}  target",
        "scenario", "measure", "value"
    );
    for r in reports {
        let _ = writeln!(out);
        for (i, row) in r.rows.iter().enumerate() {
            let name = if i == 0 { r.name.as_str() } else { "" };
            let target = match &row.target {
                Some((t, true)) => format!("{t}  held"),
                Some((t, false)) => format!("{t}  NOT HELD"),
                None => String::new(),
            };
            let line = format!(
                "{name:<22} {:<w_measure$}  {:<w_value$}  {target}",
                row.measure, row.value
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    print!("{out}");
}
