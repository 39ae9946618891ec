//! Generates a document of N rows × M columns as a JSON file, then renders it, so `/usr/bin/time -v` can measure peak memory.
//!
//! Usage: `cargo run --release --example render_rows -- <xlsx|pdf> <rows> <columns> [out]`
//! The JSON is written row by row and rendering reads it from the file, the
//! way a worker streams a payload: neither step holds the rows in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use artefatos::render::{Format, Limits, render, sample};

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
    let mut writer = BufWriter::new(File::create(&json)?);
    sample::write_document(&mut writer, rows, columns)?;
    writer.flush()?;
    drop(writer);
    let generated = started.elapsed();
    let started = Instant::now();
    let summary = render(format, File::open(&json)?, &Limits::default(), &out)?;
    let rendered = started.elapsed();
    println!(
        "{format}: {} rows x {columns} columns in {} sheet(s); JSON {} bytes written in {:.2?}; rendered in {:.2?} to {} bytes",
        summary.rows,
        summary.sheets,
        std::fs::metadata(&json)?.len(),
        generated,
        rendered,
        std::fs::metadata(&out)?.len()
    );
    Ok(())
}
