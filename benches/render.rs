//! Criterion benches of the renderers: XLSX 100k × 10 against rust_xlsxwriter writing the same cells directly, and PDF 10k × 8.

use std::hint::black_box;

use artefatos::render::sample;
use artefatos::render::{Format, Limits, render, render_slice};
use criterion::{Criterion, criterion_group, criterion_main};

const XLSX_ROWS: u64 = 100_000;
const XLSX_COLUMNS: usize = 10;
const PDF_ROWS: u64 = 10_000;
const PDF_COLUMNS: usize = 8;

fn document(rows: u64, columns: usize) -> Vec<u8> {
    let mut json = Vec::new();
    sample::write_document(&mut json, rows, columns).expect("writing to a Vec cannot fail");
    json
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();

    let xlsx_doc = document(XLSX_ROWS, XLSX_COLUMNS);
    let mut group = c.benchmark_group("xlsx_100k_rows_x10");
    group.bench_function("render", |b| {
        let out = dir.path().join("render.xlsx");
        b.iter(|| {
            render(
                Format::Xlsx,
                black_box(xlsx_doc.as_slice()),
                &limits,
                &out,
                None,
            )
            .unwrap()
        })
    });
    group.bench_function("render_slice", |b| {
        let out = dir.path().join("render_slice.xlsx");
        b.iter(|| render_slice(Format::Xlsx, black_box(&xlsx_doc), &limits, &out, None).unwrap())
    });
    group.bench_function("rust_xlsxwriter_direct", |b| {
        let out = dir.path().join("direct.xlsx");
        b.iter(|| sample::write_direct_xlsx(&out, XLSX_ROWS, XLSX_COLUMNS).unwrap())
    });
    group.finish();

    let pdf_doc = document(PDF_ROWS, PDF_COLUMNS);
    c.bench_function("pdf_10k_rows_x8", |b| {
        let out = dir.path().join("render.pdf");
        b.iter(|| {
            render(
                Format::Pdf,
                black_box(pdf_doc.as_slice()),
                &limits,
                &out,
                None,
            )
            .unwrap()
        })
    });
}

criterion_group!(render_benches, benches);
criterion_main!(render_benches);
