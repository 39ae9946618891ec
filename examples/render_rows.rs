//! Generates a document of N rows × M columns as a JSON file, then renders it, so `/usr/bin/time -v` can measure peak memory.
//!
//! Usage: `cargo run --release --example render_rows -- <xlsx|pdf> <rows> <columns> [out]`
//! The JSON is written row by row and rendering reads it from the file, the
//! way a worker streams a payload: neither step holds the rows in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use artefatos::render::{Format, Limits, render};

const KINDS: [&str; 5] = ["text", "number", "integer", "date", "boolean"];
const WORDS: [&str; 6] = [
    "Açaí Ltda",
    "São Paulo",
    "Ñandú",
    "Ελληνικά",
    "Кириллица",
    "Pão de Queijo e Cia",
];

fn write_document(path: &PathBuf, rows: u64, columns: usize) -> std::io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    write!(
        w,
        r#"{{"title":"Benchmark","locale":"pt-BR","pdf":{{"page_size":"A4","orientation":"landscape"}},"sheets":[{{"name":"Dados","columns":["#
    )?;
    for c in 0..columns {
        let sep = if c == 0 { "" } else { "," };
        write!(
            w,
            r#"{sep}{{"title":"{} {c}","type":"{}"}}"#,
            KINDS[c % 5],
            KINDS[c % 5]
        )?;
    }
    write!(w, r#"],"totals":{{"number 1":"sum"}},"rows":["#)?;
    for r in 0..rows {
        w.write_all(if r == 0 { b"[" } else { b",[" })?;
        for c in 0..columns {
            if c > 0 {
                w.write_all(b",")?;
            }
            match KINDS[c % 5] {
                "text" => write!(w, r#""{} {r}""#, WORDS[(r as usize + c) % WORDS.len()])?,
                "number" => write!(w, "{}.{}", r * 7 % 100_000, r % 100)?,
                "integer" => write!(w, "{}", r * 13 % 1000)?,
                "date" => write!(w, r#""2026-{:02}-{:02}""#, r % 12 + 1, r % 28 + 1)?,
                _ => write!(w, "{}", r % 2 == 0)?,
            }
        }
        w.write_all(b"]")?;
    }
    w.write_all(b"]}]}")?;
    w.flush()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        anyhow::bail!("usage: render_rows <xlsx|pdf> <rows> <columns> [out]");
    }
    let format: Format = args[1]
        .parse()
        .map_err(|()| anyhow::anyhow!("format must be xlsx or pdf"))?;
    let rows: u64 = args[2].parse()?;
    let columns: usize = args[3].parse()?;
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("document.json");
    let out = args
        .get(4)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join(format!("out.{format}")));

    let started = Instant::now();
    write_document(&json, rows, columns)?;
    let generated = started.elapsed();
    let started = Instant::now();
    let summary = render(format, File::open(&json)?, &Limits::default(), &out)?;
    let rendered = started.elapsed();
    println!(
        "{format}: {} rows × {columns} columns in {} sheet(s); JSON {} bytes written in {:.2?}; rendered in {:.2?} to {} bytes",
        summary.rows,
        summary.sheets,
        std::fs::metadata(&json)?.len(),
        generated,
        rendered,
        std::fs::metadata(&out)?.len()
    );
    Ok(())
}
