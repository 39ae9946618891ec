//! The document model, its validation and the XLSX and PDF renderers.
//!
//! Pure, synchronous CPU work: no network, no async runtime. Callers run it on
//! blocking threads.
//!
//! # One code path
//! [`validate`] and [`render`] run the same streaming reader (`parse.rs`): a
//! serde visitor that checks each value as it arrives and hands each row to a
//! sink — a no-op for `validate`, a writer for XLSX or PDF. So a document that
//! validates renders, and a row list is never held in memory.
//!
//! # Key order
//! Because rows stream, a sheet's `columns` (and `name`, if given) must come
//! before its `rows`, and the document's `locale` and `pdf` before `sheets`;
//! otherwise validation fails with a message saying so (`sheets[0].rows:
//! "columns" must come before "rows"`). `title` and `totals` may come anywhere.
//! serde_json's default maps and PostgreSQL's `json` type keep key order;
//! `jsonb` would not (it sorts `rows` before `columns`), so payloads are stored
//! as `json`.
//!
//! # Defaults
//! `locale` defaults to `en-US` (`pt-BR` and `en-US` are supported); `pdf`
//! defaults to A4 portrait; a sheet without `name` is called `Sheet<n>`.
//! Datetimes keep the wall-clock time as written and drop the offset, since
//! spreadsheets have no time zones.
//!
//! # Memory
//! XLSX streams rows into constant-memory worksheets. PDF renders in two
//! passes over a temp-file copy of the input (lay out to count pages, then
//! draw) and hands printpdf 100 pages at a time, so neither holds the
//! document; see BENCHMARKS.md for the figures.
//!
//! # Limits
//! [`Limits`] bound sheets, rows per sheet, columns and characters per text
//! cell; whatever they say, a sheet also holds at most 1,048,575 data rows and
//! 16,384 columns, because that is what a worksheet can store.

use std::fmt;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod font;
mod locale;
pub mod model;
mod parse;
mod pdf;
mod pdf_file;
#[doc(hidden)]
pub mod sample;
mod xlsx;

pub use parse::{EXCEL_MAX_COLUMNS, EXCEL_MAX_DATA_ROWS, MAX_SHEET_NAME_CHARS};

/// An output format; also names the work queue that carries its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Xlsx,
    Pdf,
}

impl Format {
    /// Every format, in the order workers start their consumers.
    pub const ALL: [Format; 2] = [Format::Xlsx, Format::Pdf];

    /// The lowercase name used in URLs, queue names, metrics and SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Xlsx => "xlsx",
            Format::Pdf => "pdf",
        }
    }

    /// The MIME type of an artifact of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            Format::Pdf => "application/pdf",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "xlsx" => Ok(Format::Xlsx),
            "pdf" => Ok(Format::Pdf),
            _ => Err(()),
        }
    }
}

/// Size limits a document must respect before it becomes a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sheets: usize,
    pub max_rows: usize,
    pub max_columns: usize,
    pub max_cell_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sheets: 32,
            max_rows: 1_048_575,
            max_columns: 256,
            max_cell_chars: 32_767,
        }
    }
}

/// What a valid document holds; the HTTP layer reports it, the worker logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub sheets: usize,
    pub rows: u64,
}

/// Why a document was refused, and where: `path` locates the value in the
/// document (`sheets[0].rows[41][2]`) so a client can fix it without guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// Why rendering failed; [`RenderError::is_permanent`] tells a worker whether
/// to retry.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("invalid document: {0}")]
    Invalid(ValidationError),
    #[error("I/O error while rendering: {0}")]
    Io(#[from] std::io::Error),
    #[error("XLSX writer failed: {0}")]
    Xlsx(#[from] rust_xlsxwriter::XlsxError),
    #[error("PDF writer failed: {0}")]
    Pdf(String),
    /// A renderer was driven out of order; a bug, not bad data.
    #[error("renderer bug: {0}")]
    Internal(&'static str),
}

impl RenderError {
    /// True when retrying can never help: the same document fails the same
    /// way. I/O failures (disk full, temp dir gone) may pass on another try.
    pub fn is_permanent(&self) -> bool {
        match self {
            RenderError::Invalid(_) | RenderError::Pdf(_) | RenderError::Internal(_) => true,
            RenderError::Io(_) => false,
            RenderError::Xlsx(e) => !matches!(e, rust_xlsxwriter::XlsxError::IoError(_)),
        }
    }
}

impl From<ValidationError> for RenderError {
    fn from(e: ValidationError) -> Self {
        RenderError::Invalid(e)
    }
}

/// Checks a whole document without rendering it, in one pass and without
/// holding its rows: the HTTP layer's gate, so a bad document never becomes a
/// job.
pub fn validate(document: &[u8], limits: &Limits) -> Result<Summary, ValidationError> {
    let mut de = serde_json::Deserializer::from_slice(document);
    match parse::parse(&mut de, limits, &mut parse::NullSink) {
        Ok(parsed) => Ok(parsed.summary),
        Err(RenderError::Invalid(e)) => Err(e),
        // The null sink never fails; keep the reason if that ever changes.
        Err(other) => Err(ValidationError {
            path: "document".into(),
            message: other.to_string(),
        }),
    }
}

/// Renders `document` (JSON, read as a stream) into the file at `out`,
/// validating as it goes with the same rules as [`validate`]. Blocking CPU
/// and file work: call it from a blocking thread.
pub fn render(
    format: Format,
    document: impl Read,
    limits: &Limits,
    out: &Path,
) -> Result<Summary, RenderError> {
    let reader = BufReader::with_capacity(1 << 16, document);
    match format {
        Format::Xlsx => render_xlsx(serde_json::Deserializer::from_reader(reader), limits, out),
        Format::Pdf => {
            // Pass one lays out (to count pages) while spooling the input to
            // an anonymous temporary file; pass two reads the spool and draws.
            let mut spool = Tee {
                inner: reader,
                copy: std::io::BufWriter::new(tempfile::tempfile()?),
            };
            let (pages, title) =
                layout_pdf(serde_json::Deserializer::from_reader(&mut spool), limits)?;
            let mut file = spool.copy.into_inner().map_err(|e| e.into_error())?;
            file.seek(SeekFrom::Start(0))?;
            let reader = BufReader::with_capacity(1 << 16, file);
            draw_pdf(
                serde_json::Deserializer::from_reader(reader),
                limits,
                pdf_file::PdfFile::create(out)?,
                pages,
                title,
            )
            .map(|(summary, _)| summary)
        }
    }
}

/// [`render`] for a payload already in memory (a worker's row from
/// PostgreSQL): same rules and output, but parsing a slice is about twice as
/// fast as parsing a stream, and the PDF needs no spool file.
pub fn render_slice(
    format: Format,
    document: &[u8],
    limits: &Limits,
    out: &Path,
) -> Result<Summary, RenderError> {
    match format {
        Format::Xlsx => render_xlsx(serde_json::Deserializer::from_slice(document), limits, out),
        Format::Pdf => {
            let (pages, title) =
                layout_pdf(serde_json::Deserializer::from_slice(document), limits)?;
            draw_pdf(
                serde_json::Deserializer::from_slice(document),
                limits,
                pdf_file::PdfFile::create(out)?,
                pages,
                title,
            )
            .map(|(summary, _)| summary)
        }
    }
}

/// [`render_slice`] into memory: for small documents, whose artifact is
/// uploaded straight from the returned bytes with no temporary file on the
/// way. XLSX worksheets stay in memory (no constant-memory spill files), so
/// callers keep this for documents of modest size.
pub fn render_to_memory(
    format: Format,
    document: &[u8],
    limits: &Limits,
) -> Result<(Summary, Vec<u8>), RenderError> {
    match format {
        Format::Xlsx => {
            let mut de = serde_json::Deserializer::from_slice(document);
            let mut sink = xlsx::XlsxSink::in_memory();
            let parsed = parse::parse(&mut de, limits, &mut sink)?;
            let bytes = sink.finish_to_buffer(parsed.title.as_deref())?;
            Ok((parsed.summary, bytes))
        }
        Format::Pdf => {
            let (pages, title) =
                layout_pdf(serde_json::Deserializer::from_slice(document), limits)?;
            let file = pdf_file::PdfFile::in_memory()?;
            let (summary, out) = draw_pdf(
                serde_json::Deserializer::from_slice(document),
                limits,
                file,
                pages,
                title,
            )?;
            match out {
                Some(pdf_file::PdfOut::Memory(bytes)) => Ok((summary, bytes)),
                _ => Err(RenderError::Internal("in-memory PDF written elsewhere")),
            }
        }
    }
}

fn render_xlsx<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    limits: &Limits,
    out: &Path,
) -> Result<Summary, RenderError> {
    let mut sink = xlsx::XlsxSink::new();
    let parsed = parse::parse(&mut de, limits, &mut sink)?;
    sink.finish(parsed.title.as_deref(), out)?;
    Ok(parsed.summary)
}

/// The PDF's first pass: validates and lays out, returning the page count
/// and title the second pass needs.
fn layout_pdf<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    limits: &Limits,
) -> Result<(usize, Option<String>), RenderError> {
    let mut layout = pdf::PdfSink::layout_only()?;
    let parsed = parse::parse(&mut de, limits, &mut layout)?;
    Ok((layout.page_count(), parsed.title))
}

fn draw_pdf<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    limits: &Limits,
    file: pdf_file::PdfFile,
    pages: usize,
    title: Option<String>,
) -> Result<(Summary, Option<pdf_file::PdfOut>), RenderError> {
    let mut sink = pdf::PdfSink::drawing(file, pages, title.as_deref())?;
    let drawn = parse::parse(&mut de, limits, &mut sink)?;
    let out = sink.finish()?;
    Ok((drawn.summary, out))
}

/// Copies what it reads into `copy`, so the PDF renderer can read a stream twice.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}
