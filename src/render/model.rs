//! The document model's types: columns, typed cells, totals, locale and page options.

use chrono::{NaiveDate, NaiveDateTime};
use serde::Deserialize;

/// The type of a column: decides which JSON values its cells accept and how
/// both renderers store and print them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Number,
    Integer,
    Date,
    DateTime,
    Boolean,
    Percent,
}

impl ColumnType {
    /// Every type name, as written in documents and in error messages.
    pub const NAMES: &'static str = "text, number, integer, date, datetime, boolean, percent";

    /// Parses the `type` field of a column.
    pub fn parse(name: &str) -> Option<ColumnType> {
        Some(match name {
            "text" => ColumnType::Text,
            "number" => ColumnType::Number,
            "integer" => ColumnType::Integer,
            "date" => ColumnType::Date,
            "datetime" => ColumnType::DateTime,
            "boolean" => ColumnType::Boolean,
            "percent" => ColumnType::Percent,
            _ => return None,
        })
    }

    /// The noun error messages use ("expected number").
    pub fn expected(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Number => "number",
            ColumnType::Integer => "integer",
            ColumnType::Date => "date (YYYY-MM-DD)",
            ColumnType::DateTime => "datetime (RFC 3339)",
            ColumnType::Boolean => "boolean",
            ColumnType::Percent => "percent (a number, 0.25 = 25%)",
        }
    }

    /// Whether sums, averages, minimums and maximums make sense for it.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColumnType::Number | ColumnType::Integer | ColumnType::Percent
        )
    }
}

/// A validated column of a sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub title: String,
    pub kind: ColumnType,
    /// An Excel number or date format such as `#,##0.00`; the PDF takes its
    /// number of decimals from it.
    pub format: Option<String>,
    /// Width in Excel character units; relative weight in the PDF.
    pub width: Option<f64>,
}

impl Column {
    /// Decimals the PDF prints for a number: the zeros after the point of the
    /// format if there is one, else 2 for numbers and percents, 0 for integers.
    pub fn decimals(&self) -> usize {
        if let Some(format) = &self.format {
            return decimals_of(format.split(';').next().unwrap_or(""));
        }
        match self.kind {
            ColumnType::Integer => 0,
            _ => 2,
        }
    }
}

/// Decimals a format section prints: the zeros and `#` after its point.
pub(crate) fn decimals_of(section: &str) -> usize {
    match section.find('.') {
        Some(dot) => section[dot + 1..]
            .chars()
            .take_while(|c| *c == '0' || *c == '#')
            .count(),
        None => 0,
    }
}

/// The raw JSON shape of a column, checked by the parser before it becomes a
/// [`Column`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawColumn {
    pub title: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub width: Option<f64>,
}

/// One typed cell value, as the parser hands it to a renderer.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Number(f64),
    Integer(i64),
    Date(NaiveDate),
    /// The wall-clock time as written; the offset is dropped because
    /// spreadsheets have no time zones.
    DateTime(NaiveDateTime),
    Boolean(bool),
    Percent(f64),
}

impl Cell {
    /// The numeric value totals aggregate, if the cell has one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Number(n) | Cell::Percent(n) => Some(*n),
            Cell::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }
}

/// An aggregate for the totals row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalFn {
    Sum,
    Average,
    Min,
    Max,
    Count,
}

impl TotalFn {
    /// Every function name, as written in documents and error messages.
    pub const NAMES: &'static str = "sum, average, min, max, count";

    /// Parses a value of the `totals` object.
    pub fn parse(name: &str) -> Option<TotalFn> {
        Some(match name {
            "sum" => TotalFn::Sum,
            "average" => TotalFn::Average,
            "min" => TotalFn::Min,
            "max" => TotalFn::Max,
            "count" => TotalFn::Count,
            _ => return None,
        })
    }

    /// The spreadsheet function that computes it.
    pub fn excel_name(self) -> &'static str {
        match self {
            TotalFn::Sum => "SUM",
            TotalFn::Average => "AVERAGE",
            TotalFn::Min => "MIN",
            TotalFn::Max => "MAX",
            TotalFn::Count => "COUNT",
        }
    }
}

/// A totals cell: the function and the value computed while streaming, so the
/// PDF can print it and the XLSX can cache the formula's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Total {
    pub function: TotalFn,
    pub value: f64,
}

/// Running aggregates of one column, updated row by row.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Accumulator {
    sum: f64,
    count: u64,
    min: Option<f64>,
    max: Option<f64>,
}

impl Accumulator {
    pub fn add(&mut self, value: f64) {
        self.sum += value;
        self.count += 1;
        self.min = Some(self.min.map_or(value, |m| m.min(value)));
        self.max = Some(self.max.map_or(value, |m| m.max(value)));
    }

    /// The value a spreadsheet would compute; empty ranges give 0, as
    /// `SUM`, `MIN`, `MAX` and `COUNT` do (Excel shows `#DIV/0!` for the
    /// average of nothing; the PDF prints 0).
    pub fn result(&self, function: TotalFn) -> f64 {
        match function {
            TotalFn::Sum => self.sum,
            TotalFn::Average => {
                if self.count == 0 {
                    0.0
                } else {
                    self.sum / self.count as f64
                }
            }
            TotalFn::Min => self.min.unwrap_or(0.0),
            TotalFn::Max => self.max.unwrap_or(0.0),
            TotalFn::Count => self.count as f64,
        }
    }

    /// Counts a value that has no magnitude to sum (a date).
    pub fn count_one(&mut self) {
        self.count += 1;
    }
}

/// The languages the PDF prints numbers, dates and its footer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locale {
    PtBr,
    #[default]
    EnUs,
}

impl Locale {
    /// Every supported tag, for error messages.
    pub const NAMES: &'static str = "pt-BR, en-US";

    /// Parses a BCP 47 tag (case-insensitive).
    pub fn parse(tag: &str) -> Option<Locale> {
        match tag.to_ascii_lowercase().as_str() {
            "pt-br" => Some(Locale::PtBr),
            "en-us" => Some(Locale::EnUs),
            _ => None,
        }
    }
}

/// PDF paper size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum PageSize {
    #[default]
    A4,
    Letter,
}

/// PDF page orientation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Orientation {
    #[default]
    Portrait,
    Landscape,
}

/// The `pdf` object of a document; the XLSX renderer ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdfOptions {
    #[serde(default)]
    pub page_size: PageSize,
    #[serde(default)]
    pub orientation: Orientation,
}

/// Document-level settings known before the first sheet starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocSettings {
    pub locale: Locale,
    pub pdf: PdfOptions,
    /// The title if it came before `sheets`; renderers also receive the final
    /// title when they finish.
    pub title: Option<String>,
}
