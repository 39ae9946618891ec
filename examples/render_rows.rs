//! Generates a document of N rows × M columns as a JSON file, then renders it, so `/usr/bin/time -v` can measure peak memory.
//!
//! Usage: `cargo run --release --example render_rows -- <xlsx|pdf|xlsx-direct> <rows> <columns> [out]`
//! (`xlsx-direct` writes the same cells with rust_xlsxwriter by hand: the baseline;
//! `xlsx-slice` / `pdf-slice` read the JSON into memory and call `render_slice`.)
//! The JSON is written row by row and rendering reads it from the file, the
//! way a worker streams a payload: neither step holds the rows in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use artefatos::render::{Format, Limits, render, render_slice, sample};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        anyhow::bail!(
            "usage: render_rows <xlsx|pdf|xlsx-slice|pdf-slice|xlsx-direct> <rows> <columns> [out]"
        );
    }
    let direct = args[1] == "xlsx-direct";
    let slice = args[1].ends_with("-slice");
    let format: Format = args[1]
        .trim_end_matches("-direct")
        .trim_end_matches("-slice")
        .parse()
        .map_err(|()| {
            anyhow::anyhow!("format must be xlsx, pdf, xlsx-slice, pdf-slice or xlsx-direct")
        })?;
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
    let cpu_before = cpu_seconds();
    if direct {
        sample::write_direct_xlsx(&out, rows, columns)?;
        println!(
            "xlsx-direct: {rows} rows x {columns} columns in {:.2?} wall, {:.2} s CPU",
            started.elapsed(),
            cpu_seconds() - cpu_before
        );
        return Ok(());
    }
    let summary = if slice {
        let bytes = std::fs::read(&json)?;
        render_slice(format, &bytes, &Limits::default(), &out, None)?
    } else {
        render(format, File::open(&json)?, &Limits::default(), &out, None)?
    };
    let rendered = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "{}: {} rows x {columns} columns in {} sheet(s); JSON {} bytes written in {:.2?}; rendered in {:.2?} wall, {cpu:.2} s CPU, to {} bytes",
        args[1],
        summary.rows,
        summary.sheets,
        std::fs::metadata(&json)?.len(),
        generated,
        rendered,
        std::fs::metadata(&out)?.len()
    );
    Ok(())
}

/// User + system CPU time of this process so far, from /proc (0 elsewhere):
/// on a shared machine it varies far less than wall time.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
