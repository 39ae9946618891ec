//! The document model, its validation and the XLSX and PDF renderers.
//!
//! Pure, synchronous CPU work: no network, no async runtime. Callers run it on
//! blocking threads.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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

// TEMPORARY until the renderers branch lands (replaced wholesale at merge).
#[derive(Debug, Clone, PartialEq)]
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
pub fn validate(document: &[u8], _limits: &Limits) -> Result<(), ValidationError> {
    serde_json::from_slice::<serde_json::Value>(document).map(|_| ()).map_err(|e| ValidationError { path: "document".into(), message: e.to_string() })
}
