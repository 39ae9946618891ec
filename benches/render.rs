//! Criterion benches of the renderers: XLSX 100k × 10 against rust_xlsxwriter writing the same cells directly, and PDF 10k × 8.

use std::hint::black_box;
use std::path::Path;

use artefatos::render::sample::{self, Value};
use artefatos::render::{Format, Limits, render};
use criterion::{Criterion, criterion_group, criterion_main};
use rust_xlsxwriter::{ExcelDateTime, Format as CellFormat, Workbook};

const XLSX_ROWS: u64 = 100_000;
const XLSX_COLUMNS: usize = 10;
const PDF_ROWS: u64 = 10_000;
const PDF_COLUMNS: usize = 8;

fn document(rows: u64, columns: usize) -> Vec<u8> {
    let mut json = Vec::new();
    sample::write_document(&mut json, rows, columns).expect("writing to a Vec cannot fail");
    json
}

/// What a hand-written exporter would do for the same sheet: typed cells in a
/// constant-memory worksheet, bold frozen header, autofilter, a SUM row. No
/// JSON, no validation.
fn direct_xlsx(out: &Path, rows: u64, columns: usize) {
    let mut workbook = Workbook::new();
    let bold = CellFormat::new().set_bold();
    let date = CellFormat::new().set_num_format("yyyy-mm-dd");
    let plain = CellFormat::new();
    let ws = workbook.add_worksheet_with_constant_memory().unwrap();
    ws.set_name("Dados").unwrap();
    for c in 0..columns {
        ws.write_string_with_format(0, c as u16, sample::title(c), &bold)
            .unwrap();
    }
    ws.set_freeze_panes(1, 0).unwrap();
    for r in 0..rows {
        let row = r as u32 + 1;
        for c in 0..columns {
            let col = c as u16;
            match sample::value(r, c) {
                Value::Text(s) => ws.write_string_with_format(row, col, &s, &plain),
                Value::Number(n) => ws.write_number_with_format(row, col, n, &plain),
                Value::Integer(i) => ws.write_number_with_format(row, col, i as f64, &plain),
                Value::Date(y, m, d) => {
                    let dt = ExcelDateTime::from_ymd(y, m, d).unwrap();
                    ws.write_datetime_with_format(row, col, dt, &date)
                }
                Value::Boolean(b) => ws.write_boolean_with_format(row, col, b, &plain),
            }
            .unwrap();
        }
    }
    ws.autofilter(0, 0, rows as u32, columns as u16 - 1)
        .unwrap();
    ws.write_formula(
        rows as u32 + 1,
        1,
        format!("=SUM(B2:B{})", rows + 1).as_str(),
    )
    .unwrap();
    workbook.save(out).unwrap();
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();

    let xlsx_doc = document(XLSX_ROWS, XLSX_COLUMNS);
    let mut group = c.benchmark_group("xlsx_100k_rows_x10");
    group.bench_function("render", |b| {
        let out = dir.path().join("render.xlsx");
        b.iter(|| render(Format::Xlsx, black_box(xlsx_doc.as_slice()), &limits, &out).unwrap())
    });
    group.bench_function("rust_xlsxwriter_direct", |b| {
        let out = dir.path().join("direct.xlsx");
        b.iter(|| direct_xlsx(&out, XLSX_ROWS, XLSX_COLUMNS))
    });
    group.finish();

    let pdf_doc = document(PDF_ROWS, PDF_COLUMNS);
    c.bench_function("pdf_10k_rows_x8", |b| {
        let out = dir.path().join("render.pdf");
        b.iter(|| render(Format::Pdf, black_box(pdf_doc.as_slice()), &limits, &out).unwrap())
    });
}

criterion_group!(render_benches, benches);
criterion_main!(render_benches);
