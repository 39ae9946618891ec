//! The document model, its validation and the XLSX and PDF renderers.
//!
//! Pure, synchronous CPU work: no network, no async runtime. Callers run it on
//! blocking threads.
//!
//! # One code path
//! [`validate`] and [`render`] run the same streaming reader (`parse.rs`): a
//! serde visitor that checks each value as it arrives and hands each row to a
//! sink — a no-op for `validate`, a writer for XLSX or PDF. So a document that
//! validates renders (a property test in `tests/render.rs` and the fuzz
//! target in `fuzz/` hold it to that), and a row list is never held in memory.
//!
//! # Key order
//! JSON objects are unordered, and any key order is accepted. Rows stream, so
//! a sheet's `columns` and `name` are needed before its `rows`, and the PDF
//! needs the document's `locale` and `pdf` before `sheets`. In that order
//! (the common case) a document is read once per pass. Otherwise the pass
//! stops where it finds out, a first pass over the same bytes reads only the
//! settings, names and columns (skipping rows with `IgnoredAny`, so memory
//! stays flat), and the pass runs again knowing them. Validation and XLSX
//! never need `locale` or `pdf`, so for them those keys cost nothing
//! wherever they are. [`render`] from a reader spools its input to a
//! temporary file so that it can be read again.
//!
//! # Defaults
//! `locale` defaults to `en-US` (`pt-BR` and `en-US` are supported); `pdf`
//! defaults to A4 portrait; a sheet without `name` is called `Sheet<n>`.
//! Datetimes keep the wall-clock time as written and drop the offset, since
//! spreadsheets have no time zones.
//!
//! # Memory
//! XLSX streams rows into constant-memory worksheets. PDF renders in two
//! passes over the input (lay out to count pages, then draw) and hands
//! printpdf 100 pages at a time, so neither holds the document; see
//! BENCHMARKS.md for the figures. Every pass reads the slice again
//! ([`render_slice`]) or an anonymous temp-file copy of the stream
//! ([`render`]).
//!
//! # Limits
//! [`Limits`] bound sheets, rows per sheet, columns and text length; whatever
//! they say, a sheet also holds at most 1,048,575 data rows and 16,384
//! columns, and a text at most 32,767 UTF-16 units, because that is what a
//! worksheet can store. Lengths that Excel limits are counted as Excel counts
//! them, in UTF-16 code units (sheet names ≤ 31, formats ≤ 255); formats ask
//! for at most 30 decimals, and widths are checked as the f32 the PDF uses.
//! Every limit the XLSX writer enforces is checked here first: a document
//! that validates renders.
//!
//! # Deadline
//! Every render takes an optional timeout (`ARTEFATOS_RENDER_TIMEOUT` in the
//! worker); the parser looks at the clock at each sheet and every 256 rows and
//! fails with the permanent [`RenderError::TimedOut`] once it has passed.

use std::fmt;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

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

use parse::{Deadline, Heads, Pass, Stop};
pub use parse::{
    EXCEL_MAX_CELL_CHARS, EXCEL_MAX_COLUMNS, EXCEL_MAX_DATA_ROWS, MAX_FORMAT_CHARS,
    MAX_FORMAT_DECIMALS, MAX_SHEET_NAME_CHARS,
};

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
    /// Longest text cell, column title or document title, in UTF-16 code
    /// units as Excel counts them (an emoji is 2); at most 32,767, Excel's
    /// own limit, whatever this says.
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
    /// The render ran past its deadline (`ARTEFATOS_RENDER_TIMEOUT`): the
    /// same document would take as long again, so it is not retried.
    #[error("render exceeded {seconds} s")]
    TimedOut { seconds: f64 },
}

impl RenderError {
    /// True when retrying can never help: the same document fails the same
    /// way. I/O failures (disk full, temp dir gone) may pass on another try.
    pub fn is_permanent(&self) -> bool {
        match self {
            RenderError::Invalid(_)
            | RenderError::Pdf(_)
            | RenderError::Internal(_)
            | RenderError::TimedOut { .. } => true,
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
/// job. A document whose keys are out of order costs a second pass.
pub fn validate(document: &[u8], limits: &Limits) -> Result<Summary, ValidationError> {
    let pass = Pass::new(limits, None, false);
    let result = with_heads(&mut &*document, &pass, &mut None, |mut de, pass| {
        parse::parse(&mut de, pass, &mut parse::NullSink)
    });
    match result {
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
/// and file work: call it from a blocking thread. The input is first copied
/// to an anonymous temporary file, which each pass then reads (the PDF makes
/// two, an out-of-order document one more); [`render_slice`] needs no copy.
/// Past `timeout` it fails with [`RenderError::TimedOut`].
pub fn render(
    format: Format,
    mut document: impl Read,
    limits: &Limits,
    out: &Path,
    timeout: Option<Duration>,
) -> Result<Summary, RenderError> {
    let deadline = Deadline::after(timeout);
    let mut spool = std::io::BufWriter::with_capacity(1 << 16, tempfile::tempfile()?);
    std::io::copy(&mut document, &mut spool)?;
    let mut src = Spool(spool.into_inner().map_err(|e| e.into_error())?);
    render_src(format, &mut src, limits, deadline, Target::File(out)).map(|(s, _)| s)
}

/// [`render`] for a payload already in memory (a worker's row from
/// PostgreSQL): same rules and output, but parsing a slice is about twice as
/// fast as parsing a stream, and it needs no spool file.
pub fn render_slice(
    format: Format,
    document: &[u8],
    limits: &Limits,
    out: &Path,
    timeout: Option<Duration>,
) -> Result<Summary, RenderError> {
    let deadline = Deadline::after(timeout);
    render_src(format, &mut &*document, limits, deadline, Target::File(out)).map(|(s, _)| s)
}

/// [`render_slice`] into memory: for small documents, whose artifact is
/// uploaded straight from the returned bytes with no temporary file on the
/// way. XLSX worksheets stay in memory (no constant-memory spill files), so
/// callers keep this for documents of modest size.
pub fn render_to_memory(
    format: Format,
    document: &[u8],
    limits: &Limits,
    timeout: Option<Duration>,
) -> Result<(Summary, Vec<u8>), RenderError> {
    let deadline = Deadline::after(timeout);
    match render_src(format, &mut &*document, limits, deadline, Target::Memory)? {
        (summary, Some(bytes)) => Ok((summary, bytes)),
        (_, None) => Err(RenderError::Internal("in-memory render written elsewhere")),
    }
}

/// Where a render writes.
#[derive(Clone, Copy)]
enum Target<'p> {
    File(&'p Path),
    Memory,
}

/// A document that can be read from the start again, once per pass.
trait Source<'de> {
    type Read: serde_json::de::Read<'de>;
    fn open(&mut self) -> Result<serde_json::Deserializer<Self::Read>, RenderError>;
}

impl<'de> Source<'de> for &'de [u8] {
    type Read = serde_json::de::SliceRead<'de>;
    fn open(&mut self) -> Result<serde_json::Deserializer<Self::Read>, RenderError> {
        Ok(serde_json::Deserializer::from_slice(self))
    }
}

/// The spooled copy of a streamed document.
struct Spool(std::fs::File);

impl Source<'_> for Spool {
    type Read = serde_json::de::IoRead<BufReader<std::fs::File>>;
    fn open(&mut self) -> Result<serde_json::Deserializer<Self::Read>, RenderError> {
        let mut file = self.0.try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(serde_json::Deserializer::from_reader(
            BufReader::with_capacity(1 << 16, file),
        ))
    }
}

/// Runs `attempt` over the document; if its keys are out of order, reads its
/// heads in a first pass (kept in `heads` for later passes) and runs it again.
fn with_heads<'de, S: Source<'de>, T>(
    src: &mut S,
    pass: &Pass<'_>,
    heads: &mut Option<Heads>,
    mut attempt: impl FnMut(serde_json::Deserializer<S::Read>, &Pass<'_>) -> Result<T, Stop>,
) -> Result<T, RenderError> {
    if heads.is_none() {
        match attempt(src.open()?, pass) {
            Ok(value) => return Ok(value),
            Err(Stop::Failed(e)) => return Err(e),
            Err(Stop::NeedsHeads) => {}
        }
        *heads = Some(parse::read_heads(&mut src.open()?, pass)?);
    }
    let known = Pass {
        heads: heads.as_ref(),
        ..*pass
    };
    match attempt(src.open()?, &known) {
        Ok(value) => Ok(value),
        Err(Stop::Failed(e)) => Err(e),
        Err(Stop::NeedsHeads) => Err(RenderError::Internal(
            "keys out of order after the first pass",
        )),
    }
}

fn render_src<'de, S: Source<'de>>(
    format: Format,
    src: &mut S,
    limits: &Limits,
    deadline: Option<Deadline>,
    target: Target<'_>,
) -> Result<(Summary, Option<Vec<u8>>), RenderError> {
    let mut heads = None;
    match format {
        Format::Xlsx => {
            let pass = Pass::new(limits, deadline, false);
            let (parsed, sink) = with_heads(src, &pass, &mut heads, |mut de, pass| {
                let mut sink = match target {
                    Target::File(_) => xlsx::XlsxSink::new(),
                    Target::Memory => xlsx::XlsxSink::in_memory(),
                };
                let parsed = parse::parse(&mut de, pass, &mut sink)?;
                Ok((parsed, sink))
            })?;
            let title = parsed.title.as_deref();
            match target {
                Target::File(out) => {
                    sink.finish(title, out)?;
                    Ok((parsed.summary, None))
                }
                Target::Memory => Ok((parsed.summary, Some(sink.finish_to_buffer(title)?))),
            }
        }
        Format::Pdf => {
            // Pass one lays out to count pages; pass two draws.
            let pass = Pass::new(limits, deadline, true);
            let (pages, title) = with_heads(src, &pass, &mut heads, |mut de, pass| {
                let mut layout = pdf::PdfSink::layout_only()?;
                let parsed = parse::parse(&mut de, pass, &mut layout)?;
                Ok((layout.page_count(), parsed.title))
            })?;
            let file = match target {
                Target::File(out) => pdf_file::PdfFile::create(out)?,
                Target::Memory => pdf_file::PdfFile::in_memory()?,
            };
            let mut file = Some(file);
            let (summary, out) = with_heads(src, &pass, &mut heads, |mut de, pass| {
                let file = file
                    .take()
                    .ok_or(RenderError::Internal("PDF drawn twice"))?;
                let mut sink = pdf::PdfSink::drawing(file, pages, title.as_deref())?;
                let drawn = parse::parse(&mut de, pass, &mut sink)?;
                Ok((drawn.summary, sink.finish()?))
            })?;
            match (target, out) {
                (Target::File(_), _) => Ok((summary, None)),
                (Target::Memory, Some(pdf_file::PdfOut::Memory(bytes))) => {
                    Ok((summary, Some(bytes)))
                }
                (Target::Memory, _) => {
                    Err(RenderError::Internal("in-memory PDF written elsewhere"))
                }
            }
        }
    }
}
