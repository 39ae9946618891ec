//! Synthetic documents of any size, shared by the benches and the memory example so both measure the same cells.

use std::io::{self, Write};
use std::path::Path;

use rust_xlsxwriter::{ExcelDateTime, Format, Workbook, XlsxError};

/// Column types cycle through these, so every renderer path is exercised.
pub const KINDS: [&str; 5] = ["text", "number", "integer", "date", "boolean"];
const WORDS: [&str; 6] = [
    "Açaí Ltda",
    "São Paulo",
    "Ñandú",
    "Ελληνικά",
    "Кириллица",
    "Pão de Queijo e Cia",
];

/// One generated cell, typed, for writers that skip the JSON (the baseline).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Number(f64),
    Integer(i64),
    /// Year, month, day.
    Date(u16, u8, u8),
    Boolean(bool),
}

/// The cell at row `r`, column `c`.
pub fn value(r: u64, c: usize) -> Value {
    match KINDS[c % KINDS.len()] {
        "text" => Value::Text(format!("{} {r}", WORDS[(r as usize + c) % WORDS.len()])),
        "number" => Value::Number((r * 7 % 100_000) as f64 + (r % 100) as f64 / 100.0),
        "integer" => Value::Integer((r * 13 % 1000) as i64),
        "date" => Value::Date(2026, (r % 12 + 1) as u8, (r % 28 + 1) as u8),
        _ => Value::Boolean(r.is_multiple_of(2)),
    }
}

/// The title of column `c`.
pub fn title(c: usize) -> String {
    format!("{} {c}", KINDS[c % KINDS.len()])
}

/// Writes a one-sheet document of `rows` × `columns` cells as JSON, row by
/// row, with a sum under column 1.
pub fn write_document(mut w: impl Write, rows: u64, columns: usize) -> io::Result<()> {
    w.write_all(br#"{"title":"Benchmark","locale":"pt-BR","pdf":{"page_size":"A4","orientation":"landscape"},"sheets":[{"name":"Dados","columns":["#)?;
    for c in 0..columns {
        let sep = if c == 0 { "" } else { "," };
        let kind = KINDS[c % KINDS.len()];
        write!(w, r#"{sep}{{"title":"{}","type":"{kind}"}}"#, title(c))?;
    }
    w.write_all(br#"],"totals":{"number 1":"sum"},"rows":["#)?;
    for r in 0..rows {
        w.write_all(if r == 0 { b"[" } else { b",[" })?;
        for c in 0..columns {
            if c > 0 {
                w.write_all(b",")?;
            }
            match value(r, c) {
                Value::Text(s) => write!(w, "\"{s}\"")?,
                Value::Number(n) => write!(w, "{n}")?,
                Value::Integer(i) => write!(w, "{i}")?,
                Value::Date(y, m, d) => write!(w, "\"{y:04}-{m:02}-{d:02}\"")?,
                Value::Boolean(b) => write!(w, "{b}")?,
            }
        }
        w.write_all(b"]")?;
    }
    w.write_all(b"]}]}")
}

/// The baseline `render` is measured against: what a hand-written exporter
/// does for the same sheet with rust_xlsxwriter (constant memory, bold frozen
/// header, date format, autofilter, a SUM row), from generated values — no
/// JSON, no validation.
pub fn write_direct_xlsx(out: &Path, rows: u64, columns: usize) -> Result<(), XlsxError> {
    let mut workbook = Workbook::new();
    let bold = Format::new().set_bold();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let ws = workbook.add_worksheet_with_constant_memory()?;
    ws.set_name("Dados")?;
    for c in 0..columns {
        ws.write_string_with_format(0, c as u16, title(c), &bold)?;
    }
    ws.set_freeze_panes(1, 0)?;
    for r in 0..rows {
        let row = r as u32 + 1;
        for c in 0..columns {
            let col = c as u16;
            match value(r, c) {
                Value::Text(s) => ws.write_string(row, col, &s),
                Value::Number(n) => ws.write_number(row, col, n),
                Value::Integer(i) => ws.write_number(row, col, i as f64),
                Value::Date(y, m, d) => ws.write_datetime_with_format(
                    row,
                    col,
                    ExcelDateTime::from_ymd(y, m, d)?,
                    &date,
                ),
                Value::Boolean(b) => ws.write_boolean(row, col, b),
            }?;
        }
    }
    ws.autofilter(0, 0, rows as u32, columns as u16 - 1)?;
    ws.write_formula(
        rows as u32 + 1,
        1,
        format!("=SUM(B2:B{})", rows + 1).as_str(),
    )?;
    workbook.save(out)
}
