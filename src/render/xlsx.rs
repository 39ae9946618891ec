//! The XLSX renderer: a [`Sink`] that streams rows into constant-memory worksheets.

use std::path::Path;

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format, Formula, Workbook, Worksheet};

use super::RenderError;
use super::model::{Cell, Column, ColumnType, DocSettings, Total, TotalFn};
use super::parse::Sink;

/// Widest column (in characters) the content estimate picks, so one long
/// comment does not make a column screen-wide.
const MAX_AUTO_WIDTH: f64 = 60.0;

/// Writes each sheet as its rows arrive. Constant-memory worksheets flush each
/// row to a temporary file, so memory does not grow with the row count.
pub(crate) struct XlsxSink {
    workbook: Workbook,
    sheet: Option<SheetWriter>,
    /// Flush rows to temporary files (big documents) or keep every sheet in
    /// memory (small ones: no file is touched).
    constant_memory: bool,
}

/// The state of the worksheet being written.
struct SheetWriter {
    index: usize,
    kinds: Vec<ColumnType>,
    /// `None` for General: writing without a format skips the writer's
    /// per-cell format lookup (a hash of the whole format).
    formats: Vec<Option<Format>>,
    /// Widths given by the document; `None` means estimate from content.
    given_widths: Vec<Option<f64>>,
    /// Widest content seen so far, in characters.
    seen_widths: Vec<f64>,
    /// Next worksheet row (0 is the header).
    next_row: u32,
    bold: Format,
}

impl XlsxSink {
    /// A sink whose worksheets stream through temporary files: memory stays
    /// flat whatever the row count.
    pub fn new() -> Self {
        XlsxSink {
            workbook: Workbook::new(),
            sheet: None,
            constant_memory: true,
        }
    }

    /// A sink that keeps its worksheets in memory: for small documents, where
    /// the temporary files would cost more than the rows.
    ///
    /// Its zip is deflated at level 1: for a document of a few rows the
    /// compressor, set up afresh for each of the workbook's dozen parts, was
    /// the largest cost of the job (perf, BENCHMARKS.md), and the file grows
    /// by a few hundred bytes.
    pub fn in_memory() -> Self {
        let mut workbook = Workbook::new();
        workbook.set_zip_compression_level(1);
        XlsxSink {
            workbook,
            sheet: None,
            constant_memory: false,
        }
    }

    /// Sets the document title and writes the workbook to `out`.
    pub fn finish(mut self, title: Option<&str>, out: &Path) -> Result<(), RenderError> {
        self.set_title(title);
        self.workbook.save(out)?;
        Ok(())
    }

    /// Sets the document title and returns the workbook's bytes.
    pub fn finish_to_buffer(mut self, title: Option<&str>) -> Result<Vec<u8>, RenderError> {
        self.set_title(title);
        Ok(self.workbook.save_to_buffer()?)
    }

    fn set_title(&mut self, title: Option<&str>) {
        if let Some(title) = title {
            self.workbook
                .set_properties(&DocProperties::new().set_title(title));
        }
    }

    fn worksheet(&mut self) -> Result<(&mut Worksheet, &mut SheetWriter), RenderError> {
        let sheet = self
            .sheet
            .as_mut()
            .ok_or(RenderError::Internal("XLSX row outside a sheet"))?;
        let worksheet = self.workbook.worksheet_from_index(sheet.index)?;
        Ok((worksheet, sheet))
    }
}

/// The format a column's cells get: the document's, else one that shows the
/// type (dates as dates, percents as percents), else none.
fn cell_format(column: &Column) -> Option<Format> {
    let default = match column.kind {
        ColumnType::Date => Some("yyyy-mm-dd"),
        ColumnType::DateTime => Some("yyyy-mm-dd hh:mm:ss"),
        ColumnType::Percent => Some("0.00%"),
        _ => None,
    };
    column
        .format
        .as_deref()
        .or(default)
        .map(|f| Format::new().set_num_format(f))
}

fn excel_date(d: NaiveDate) -> Result<ExcelDateTime, RenderError> {
    // The parser keeps years in 1900..=9999, so these conversions hold.
    let year = u16::try_from(d.year()).unwrap_or(1900);
    Ok(ExcelDateTime::from_ymd(
        year,
        d.month() as u8,
        d.day() as u8,
    )?)
}

fn excel_datetime(t: NaiveDateTime) -> Result<ExcelDateTime, RenderError> {
    let seconds = f64::from(t.second()) + f64::from(t.nanosecond() % 1_000_000_000) / 1e9;
    Ok(excel_date(t.date())?.and_hms(t.hour() as u16, t.minute() as u8, seconds)?)
}

/// Characters a cell shows, for the column width estimate.
fn display_width(cell: &Cell) -> f64 {
    match cell {
        Cell::Null => 0.0,
        Cell::Text(s) => s.chars().count() as f64,
        Cell::Number(n) => (n.abs().max(1.0).log10().floor() + 5.0).min(20.0),
        Cell::Percent(_) => 8.0,
        Cell::Integer(i) => (*i as f64).abs().max(1.0).log10().floor() + 2.0,
        Cell::Date(_) => 10.0,
        Cell::DateTime(_) => 19.0,
        Cell::Boolean(_) => 5.0,
    }
}

/// `C` for column 2: the letters of a 0-based column index.
fn column_letters(mut col: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'A' + (col % 26) as u8);
        if col < 26 {
            break;
        }
        col = col / 26 - 1;
    }
    letters.reverse();
    String::from_utf8(letters).unwrap_or_default()
}

impl Sink for XlsxSink {
    fn begin_sheet(
        &mut self,
        _settings: &DocSettings,
        name: &str,
        columns: &[Column],
    ) -> Result<(), RenderError> {
        let index = self.sheet.as_ref().map_or(0, |s| s.index + 1);
        let bold = Format::new().set_bold();
        let worksheet = if self.constant_memory {
            self.workbook.add_worksheet_with_constant_memory()?
        } else {
            self.workbook.add_worksheet()
        };
        worksheet.set_name(name)?;
        for (c, column) in columns.iter().enumerate() {
            worksheet.write_string_with_format(0, c as u16, &column.title, &bold)?;
        }
        worksheet.set_freeze_panes(1, 0)?;
        self.sheet = Some(SheetWriter {
            index,
            kinds: columns.iter().map(|c| c.kind).collect(),
            formats: columns.iter().map(cell_format).collect(),
            given_widths: columns.iter().map(|c| c.width).collect(),
            seen_widths: columns
                .iter()
                .map(|c| c.title.chars().count() as f64 + 2.0)
                .collect(),
            next_row: 1,
            bold,
        });
        Ok(())
    }

    fn row(&mut self, cells: &[Cell]) -> Result<(), RenderError> {
        let (ws, sheet) = self.worksheet()?;
        let row = sheet.next_row;
        for (c, cell) in cells.iter().enumerate() {
            let col = c as u16;
            let format = sheet.formats[c].as_ref();
            match (cell, format) {
                (Cell::Null, _) => continue,
                (Cell::Text(s), None) => ws.write_string(row, col, s)?,
                (Cell::Text(s), Some(f)) => ws.write_string_with_format(row, col, s, f)?,
                (Cell::Number(n) | Cell::Percent(n), None) => ws.write_number(row, col, *n)?,
                (Cell::Number(n) | Cell::Percent(n), Some(f)) => {
                    ws.write_number_with_format(row, col, *n, f)?
                }
                (Cell::Integer(i), None) => ws.write_number(row, col, *i as f64)?,
                (Cell::Integer(i), Some(f)) => {
                    ws.write_number_with_format(row, col, *i as f64, f)?
                }
                (Cell::Boolean(b), None) => ws.write_boolean(row, col, *b)?,
                (Cell::Boolean(b), Some(f)) => ws.write_boolean_with_format(row, col, *b, f)?,
                (Cell::Date(d), None) => ws.write_datetime(row, col, excel_date(*d)?)?,
                (Cell::Date(d), Some(f)) => {
                    ws.write_datetime_with_format(row, col, excel_date(*d)?, f)?
                }
                (Cell::DateTime(t), None) => ws.write_datetime(row, col, excel_datetime(*t)?)?,
                (Cell::DateTime(t), Some(f)) => {
                    ws.write_datetime_with_format(row, col, excel_datetime(*t)?, f)?
                }
            };
            if sheet.given_widths[c].is_none() {
                let w = display_width(cell);
                if w > sheet.seen_widths[c] {
                    sheet.seen_widths[c] = w.min(MAX_AUTO_WIDTH);
                }
            }
        }
        sheet.next_row += 1;
        Ok(())
    }

    fn end_sheet(&mut self, rows: u64, totals: &[Option<Total>]) -> Result<(), RenderError> {
        let (ws, sheet) = self.worksheet()?;
        let last_col = (sheet.kinds.len() - 1) as u16;
        let last_data_row = sheet.next_row - 1;
        ws.autofilter(0, 0, last_data_row, last_col)?;
        for (c, width) in sheet.given_widths.iter().enumerate() {
            ws.set_column_width(c as u16, width.unwrap_or(sheet.seen_widths[c] + 1.0))?;
        }
        if totals.iter().any(Option::is_some) {
            let row = sheet.next_row;
            // Label the row in the first column without a total.
            if let Some(free) = totals.iter().position(Option::is_none) {
                ws.write_string_with_format(row, free as u16, "Total", &sheet.bold)?;
            }
            for (c, total) in totals.iter().enumerate() {
                let Some(total) = total else { continue };
                // A count is a plain number, even under a date column.
                let format = match total.function {
                    TotalFn::Count => Format::new().set_bold().set_num_format("0"),
                    _ => sheet.formats[c].clone().unwrap_or_default().set_bold(),
                };
                if rows == 0 {
                    // A formula over no rows would reference itself.
                    ws.write_number_with_format(row, c as u16, 0.0, &format)?;
                    continue;
                }
                let letters = column_letters(c);
                let formula = Formula::new(format!(
                    "={}({letters}2:{letters}{})",
                    total.function.excel_name(),
                    last_data_row + 1
                ))
                .set_result(total.value.to_string());
                ws.write_formula_with_format(row, c as u16, formula, &format)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::column_letters;

    #[test]
    fn column_letters_follow_excel() {
        assert_eq!(column_letters(0), "A");
        assert_eq!(column_letters(2), "C");
        assert_eq!(column_letters(25), "Z");
        assert_eq!(column_letters(26), "AA");
        assert_eq!(column_letters(701), "ZZ");
        assert_eq!(column_letters(702), "AAA");
    }
}
