//! The PDF renderer: a [`Sink`] that lays rows out into paginated tables and writes them with printpdf.
//!
//! Layout happens row by row as the parser streams: each row is measured with
//! the embedded font's real glyph widths, wrapped (or ellipsized past
//! [`MAX_LINES`]) and placed; a row that does not fit starts a new page that
//! repeats the header.
//!
//! Memory stays bounded by rendering in two passes over the document: the
//! first only lays out, to learn the page count the footer prints ("page X of
//! N"); the second draws, and every [`BATCH_PAGES`] pages hands a batch to
//! printpdf and streams it into the file (`pdf_file.rs`). printpdf holds one
//! batch at a time, never the document.

use printpdf::{
    Color, Line, LinePoint, Mm, Op, PaintMode, ParsedFont, PdfDocument, PdfFontHandle, PdfPage,
    PdfSaveOptions, Point, Pt, Rect, Rgb, TextItem, TextMatrix,
};

use super::pdf_file::{PdfFile, PdfOut};

use super::RenderError;
use super::font::{DEJAVU_SANS, Metrics};
use super::locale;
use super::model::{Cell, Column, DocSettings, Locale, Orientation, PageSize, Total};
use super::parse::Sink;

const MARGIN: f32 = 36.0;
const FONT_SIZE: f32 = 8.0;
const LINE_HEIGHT: f32 = 10.0;
const CELL_PAD_X: f32 = 3.0;
const CELL_PAD_Y: f32 = 3.0;
const TITLE_SIZE: f32 = 16.0;
const TITLE_BAND: f32 = 28.0;
const SECTION_SIZE: f32 = 12.0;
const SECTION_BAND: f32 = 20.0;
const FOOTER_SIZE: f32 = 8.0;
/// Space kept free above the bottom margin for the footer.
const FOOTER_BAND: f32 = 14.0;
/// Lines a cell may wrap to before the rest is cut with an ellipsis.
pub(crate) const MAX_LINES: usize = 3;
const ELLIPSIS: &str = "…";
/// Pages printpdf holds at once: about 1 MB of drawing operations per 100
/// pages, and one font subset per batch in the file (about 20 KB).
pub(crate) const BATCH_PAGES: usize = 100;

/// One finished or in-progress page: background shapes, then text.
#[derive(Default)]
struct Page {
    shapes: Vec<Op>,
    text: Vec<Op>,
}

/// The table of the sheet being laid out.
struct Table {
    columns: Vec<Column>,
    /// Left edge and width of each column, in points.
    xs: Vec<(f32, f32)>,
    header: Vec<Vec<String>>,
    header_height: f32,
    rows_on_page: u64,
}

/// Lays out every sheet into pages, then writes them on `finish`.
pub(crate) struct PdfSink {
    doc: PdfDocument,
    font: PdfFontHandle,
    metrics: Metrics,
    locale: Locale,
    width: f32,
    height: f32,
    pages: Vec<Page>,
    /// Distance from the bottom of the page to the next free line.
    y: f32,
    table: Option<Table>,
    /// Reused buffer for one row's wrapped cells.
    row_lines: Vec<Vec<String>>,
    /// Pages started so far, in the whole document.
    page_count: usize,
    /// `None` in the layout-only pass.
    output: Option<Output>,
}

/// Where the drawing pass writes, and what the layout pass learnt.
struct Output {
    file: PdfFile,
    total_pages: usize,
    title: Option<String>,
}

impl PdfSink {
    /// A sink that only lays out, to count pages; nothing is drawn.
    pub fn layout_only() -> Result<Self, RenderError> {
        Self::new(None)
    }

    /// A sink that draws into `file`, knowing the page count and title the
    /// layout pass found.
    pub fn drawing(
        file: PdfFile,
        total_pages: usize,
        title: Option<&str>,
    ) -> Result<Self, RenderError> {
        Self::new(Some(Output {
            file,
            total_pages,
            title: title.map(str::to_string),
        }))
    }

    /// Pages the document has (so far).
    pub fn page_count(&self) -> usize {
        self.page_count
    }

    /// Loads the embedded font; fails only if the compiled-in font is broken.
    fn new(output: Option<Output>) -> Result<Self, RenderError> {
        let metrics = Metrics::load()?;
        let mut warnings = Vec::new();
        let font = ParsedFont::from_bytes(DEJAVU_SANS, 0, &mut warnings)
            .ok_or_else(|| RenderError::Pdf("embedded font does not load".into()))?;
        let mut doc = PdfDocument::new("");
        let font = PdfFontHandle::External(doc.add_font(&font));
        Ok(PdfSink {
            doc,
            font,
            metrics,
            locale: Locale::default(),
            width: 0.0,
            height: 0.0,
            pages: Vec::new(),
            y: 0.0,
            table: None,
            row_lines: Vec::new(),
            page_count: 0,
            output,
        })
    }

    fn drawing_pass(&self) -> bool {
        self.output.is_some()
    }

    fn start_page(&mut self) -> Result<(), RenderError> {
        if self.pages.len() >= BATCH_PAGES {
            self.flush()?;
        }
        if !self.drawing_pass() {
            self.pages.clear();
        }
        self.pages.push(Page::default());
        self.page_count += 1;
        self.y = self.height - MARGIN;
        if self.page_count == 1 {
            self.y -= TITLE_BAND;
            if let Some(title) = self.output.as_ref().and_then(|o| o.title.clone()) {
                self.set_size(TITLE_SIZE);
                self.text_at(MARGIN, self.height - MARGIN - TITLE_SIZE, title);
                self.set_size(FONT_SIZE);
            }
        }
        Ok(())
    }

    fn page(&mut self) -> &mut Page {
        if self.pages.is_empty() {
            self.pages.push(Page::default());
        }
        let last = self.pages.len() - 1;
        &mut self.pages[last]
    }

    fn bottom(&self) -> f32 {
        MARGIN + FOOTER_BAND
    }

    fn text_at(&mut self, x: f32, baseline: f32, text: String) {
        if !self.drawing_pass() {
            return;
        }
        let page = self.page();
        page.text.push(Op::SetTextMatrix {
            matrix: TextMatrix::Translate(Pt(x), Pt(baseline)),
        });
        page.text.push(Op::ShowText {
            items: vec![TextItem::Text(text)],
        });
    }

    fn fill_rect(&mut self, x: f32, y: f32, w: f32, h: f32, grey: f32) {
        if !self.drawing_pass() {
            return;
        }
        let page = self.page();
        page.shapes.push(Op::SetFillColor {
            col: grey_color(grey),
        });
        page.shapes.push(Op::DrawRectangle {
            rectangle: Rect {
                x: Pt(x),
                y: Pt(y),
                width: Pt(w),
                height: Pt(h),
                mode: Some(PaintMode::Fill),
                winding_order: None,
            },
        });
    }

    fn hline(&mut self, x0: f32, x1: f32, y: f32) {
        if !self.drawing_pass() {
            return;
        }
        let page = self.page();
        page.shapes.push(Op::DrawLine {
            line: Line {
                points: vec![
                    LinePoint {
                        p: Point {
                            x: Pt(x0),
                            y: Pt(y),
                        },
                        bezier: false,
                    },
                    LinePoint {
                        p: Point {
                            x: Pt(x1),
                            y: Pt(y),
                        },
                        bezier: false,
                    },
                ],
                is_closed: false,
            },
        });
    }

    /// Draws the header row of the current table at the cursor.
    fn draw_header(&mut self) {
        let Some(table) = self.table.take() else {
            return;
        };
        let top = self.y;
        let left = table.xs[0].0;
        let right = table.xs.last().map_or(left, |(x, w)| x + w);
        self.fill_rect(
            left,
            top - table.header_height,
            right - left,
            table.header_height,
            0.85,
        );
        for (c, lines) in table.header.iter().enumerate() {
            let (x, w) = table.xs[c];
            let right = table.columns[c].kind.is_numeric();
            for (l, line) in lines.iter().enumerate() {
                let baseline = top - CELL_PAD_Y - FONT_SIZE - l as f32 * LINE_HEIGHT + 1.0;
                let tx = if right {
                    x + w - CELL_PAD_X - self.metrics.width(line, FONT_SIZE)
                } else {
                    x + CELL_PAD_X
                };
                self.text_at(tx, baseline, line.clone());
            }
        }
        self.hline(left, right, top - table.header_height);
        self.y = top - table.header_height;
        self.table = Some(Table {
            rows_on_page: 0,
            ..table
        });
    }

    fn new_table_page(&mut self) -> Result<(), RenderError> {
        self.start_page()?;
        self.draw_header();
        Ok(())
    }

    /// Places one row of already wrapped cells; `right[c]` right-aligns.
    fn place_row(
        &mut self,
        lines: &mut [Vec<String>],
        right: &[bool],
        shade: Option<f32>,
    ) -> Result<(), RenderError> {
        let count = lines.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let height = count as f32 * LINE_HEIGHT + 2.0 * CELL_PAD_Y;
        if self.y - height < self.bottom()
            && self.table.as_ref().is_some_and(|t| t.rows_on_page > 0)
        {
            self.new_table_page()?;
        }
        let Some(table) = self.table.take() else {
            return Ok(());
        };
        let top = self.y;
        let left = table.xs[0].0;
        let right_edge = table.xs.last().map_or(left, |(x, w)| x + w);
        let stripe = shade.or((table.rows_on_page % 2 == 1).then_some(0.95));
        if let Some(grey) = stripe {
            self.fill_rect(left, top - height, right_edge - left, height, grey);
        }
        // One text operation per line of the row: cells after the first are
        // placed with TJ offsets, which keeps a row's memory to its strings.
        for l in 0..count {
            let mut items: Vec<TextItem> = Vec::with_capacity(2 * lines.len());
            let mut start = 0.0;
            let mut pen: Option<f32> = None;
            for (c, cell_lines) in lines.iter_mut().enumerate() {
                let Some(line) = cell_lines.get_mut(l).map(std::mem::take) else {
                    continue;
                };
                if line.is_empty() {
                    continue;
                }
                let (x, w) = table.xs[c];
                let width = self.metrics.width(&line, FONT_SIZE);
                let tx = if right[c] {
                    x + w - CELL_PAD_X - width
                } else {
                    x + CELL_PAD_X
                };
                match pen {
                    None => start = tx,
                    // TJ numbers move the pen left by n/1000 em.
                    Some(p) => items.push(TextItem::Offset(-(tx - p) * 1000.0 / FONT_SIZE)),
                }
                pen = Some(tx + width);
                items.push(TextItem::Text(line));
            }
            if !items.is_empty() && self.drawing_pass() {
                let baseline = top - CELL_PAD_Y - FONT_SIZE - l as f32 * LINE_HEIGHT + 1.0;
                let page = self.page();
                page.text.push(Op::SetTextMatrix {
                    matrix: TextMatrix::Translate(Pt(start), Pt(baseline)),
                });
                page.text.push(Op::ShowText { items });
            }
        }
        lines.iter_mut().for_each(Vec::clear);
        self.y = top - height;
        self.table = Some(Table {
            rows_on_page: table.rows_on_page + 1,
            ..table
        });
        Ok(())
    }

    /// Hands the pages drawn so far, with their footers, to printpdf and
    /// streams the result into the file.
    fn flush(&mut self) -> Result<(), RenderError> {
        let Some(output) = self.output.as_mut() else {
            self.pages.clear();
            return Ok(());
        };
        let first = self.page_count - self.pages.len();
        let (w_mm, h_mm) = (Mm(self.width * 25.4 / 72.0), Mm(self.height * 25.4 / 72.0));
        let mut batch = Vec::with_capacity(self.pages.len());
        for (i, page) in self.pages.drain(..).enumerate() {
            let mut ops = page.shapes;
            ops.reserve(page.text.len() + 8);
            ops.push(Op::SetFillColor {
                col: grey_color(0.0),
            });
            ops.push(Op::StartTextSection);
            ops.push(Op::SetFont {
                font: self.font.clone(),
                size: Pt(FONT_SIZE),
            });
            ops.extend(page.text);
            let footer = locale::footer(first + i + 1, output.total_pages, self.locale);
            let fw = self.metrics.width(&footer, FOOTER_SIZE);
            ops.push(Op::SetFont {
                font: self.font.clone(),
                size: Pt(FOOTER_SIZE),
            });
            ops.push(Op::SetTextMatrix {
                matrix: TextMatrix::Translate(Pt((self.width - fw) / 2.0), Pt(MARGIN)),
            });
            ops.push(Op::ShowText {
                items: vec![TextItem::Text(footer)],
            });
            ops.push(Op::EndTextSection);
            batch.push(PdfPage::new(w_mm, h_mm, ops));
        }
        self.doc.pages = batch;
        let mut warnings = Vec::new();
        let mut lo = self
            .doc
            .to_lopdf_document(&PdfSaveOptions::default(), &mut warnings);
        self.doc.pages.clear();
        lo.compress();
        output.file.append(lo)
    }

    /// Writes the last batch and closes the file; `None` in the layout pass.
    pub fn finish(mut self) -> Result<Option<PdfOut>, RenderError> {
        self.flush()?;
        match self.output.take() {
            Some(output) => output
                .file
                .finish(output.title.as_deref().unwrap_or(""))
                .map(Some),
            None => Ok(None),
        }
    }
}

fn grey_color(level: f32) -> Color {
    Color::Rgb(Rgb {
        r: level,
        g: level,
        b: level,
        icc_profile: None,
    })
}

/// Breaks `text` into at most `max_lines` lines no wider than `width`
/// points, at spaces where possible, and ends a cut text with an ellipsis.
/// Linear in the text: widths are running sums of glyph advances, never a
/// line measured again.
pub(crate) fn wrap(metrics: &Metrics, text: &str, width: f32, max_lines: usize) -> Vec<String> {
    let fits = |units: u32| metrics.points(units, FONT_SIZE) <= width;
    let space = metrics.units(' ');
    let mut lines: Vec<String> = Vec::new();
    // Stops as soon as a line past the limit appears: that proves a cut.
    let full = |lines: &Vec<String>| lines.len() > max_lines;
    'paragraphs: for paragraph in text.split('\n') {
        let mut line = String::new();
        let mut line_units = 0u32;
        for word in paragraph.split(' ') {
            let word: String = word
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let word_units: u32 = word.chars().map(|c| metrics.units(c)).sum();
            let candidate_units = if line.is_empty() {
                word_units
            } else {
                line_units + space + word_units
            };
            if fits(candidate_units) {
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(&word);
                line_units = candidate_units;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
                line_units = 0;
                if full(&lines) {
                    break 'paragraphs;
                }
            }
            // The word alone: break it by characters if it is still too wide.
            let mut line_chars = 0usize;
            for ch in word.chars() {
                let ch_units = metrics.units(ch);
                if line_chars >= 1 && !fits(line_units + ch_units) {
                    lines.push(std::mem::take(&mut line));
                    if full(&lines) {
                        break 'paragraphs;
                    }
                    line_units = 0;
                    line_chars = 0;
                }
                line.push(ch);
                line_units += ch_units;
                line_chars += 1;
            }
        }
        lines.push(line);
        if full(&lines) {
            break;
        }
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            *last = ellipsize(metrics, last, width);
        }
    }
    lines
}

/// Cuts `text` so that it plus "…" fits in `width` points: one walk over the
/// characters, keeping the longest prefix that fits.
pub(crate) fn ellipsize(metrics: &Metrics, text: &str, width: f32) -> String {
    let text = text.trim_end();
    let mut units: u32 = ELLIPSIS.chars().map(|c| metrics.units(c)).sum();
    let mut end = 0;
    for (i, c) in text.char_indices() {
        units += metrics.units(c);
        if metrics.points(units, FONT_SIZE) > width {
            break;
        }
        end = i + c.len_utf8();
    }
    let mut out = String::with_capacity(end + ELLIPSIS.len());
    out.push_str(&text[..end]);
    out.push_str(ELLIPSIS);
    out
}

/// Relative width of a column when the document gives none.
fn default_weight(column: &Column) -> f32 {
    use super::model::ColumnType::*;
    match column.kind {
        Text => 18.0,
        Number => 12.0,
        Integer => 8.0,
        Date => 10.0,
        DateTime => 15.0,
        Boolean => 6.0,
        Percent => 8.0,
    }
}

impl Sink for PdfSink {
    fn begin_sheet(
        &mut self,
        settings: &DocSettings,
        name: &str,
        columns: &[Column],
    ) -> Result<(), RenderError> {
        if self.pages.is_empty() {
            self.locale = settings.locale;
            let (w, h) = match settings.pdf.page_size {
                PageSize::A4 => (595.28, 841.89),
                PageSize::Letter => (612.0, 792.0),
            };
            (self.width, self.height) = match settings.pdf.orientation {
                Orientation::Portrait => (w, h),
                Orientation::Landscape => (h, w),
            };
        }
        self.start_page()?;
        // Section heading: the sheet's name.
        let baseline = self.y - SECTION_SIZE;
        self.set_size(SECTION_SIZE);
        self.text_at(MARGIN, baseline, name.to_string());
        self.set_size(FONT_SIZE);
        self.y -= SECTION_BAND;

        let available = self.width - 2.0 * MARGIN;
        let weights: Vec<f32> = columns
            .iter()
            .map(|c| c.width.map_or_else(|| default_weight(c), |w| w as f32))
            .collect();
        let sum: f32 = weights.iter().sum();
        let mut x = MARGIN;
        let xs: Vec<(f32, f32)> = weights
            .iter()
            .map(|w| {
                let width = available * w / sum;
                let start = x;
                x += width;
                (start, width)
            })
            .collect();
        let header: Vec<Vec<String>> = columns
            .iter()
            .zip(&xs)
            .map(|(c, (_, w))| wrap(&self.metrics, &c.title, w - 2.0 * CELL_PAD_X, 2))
            .collect();
        let lines = header.iter().map(Vec::len).max().unwrap_or(1).max(1);
        self.table = Some(Table {
            columns: columns.to_vec(),
            xs,
            header,
            header_height: lines as f32 * LINE_HEIGHT + 2.0 * CELL_PAD_Y,
            rows_on_page: 0,
        });
        self.draw_header();
        Ok(())
    }

    fn row(&mut self, cells: &[Cell]) -> Result<(), RenderError> {
        let Some(table) = self.table.as_ref() else {
            return Err(RenderError::Internal("PDF row outside a sheet"));
        };
        let mut lines = std::mem::take(&mut self.row_lines);
        lines.resize_with(cells.len(), Vec::new);
        let mut right = Vec::with_capacity(cells.len());
        for (c, cell) in cells.iter().enumerate() {
            let column = &table.columns[c];
            let inner = table.xs[c].1 - 2.0 * CELL_PAD_X;
            let text = locale::cell(cell, column, self.locale);
            let numeric = column.kind.is_numeric();
            right.push(numeric);
            lines[c].clear();
            if text.is_empty() {
                continue;
            }
            if numeric || !matches!(cell, Cell::Text(_)) {
                if self.metrics.width(&text, FONT_SIZE) <= inner {
                    lines[c].push(text);
                } else {
                    lines[c].push(ellipsize(&self.metrics, &text, inner));
                }
            } else {
                lines[c] = wrap(&self.metrics, &text, inner, MAX_LINES);
            }
        }
        let placed = self.place_row(&mut lines, &right, None);
        self.row_lines = lines;
        placed
    }

    fn end_sheet(&mut self, _rows: u64, totals: &[Option<Total>]) -> Result<(), RenderError> {
        let Some(table) = self.table.as_ref() else {
            return Err(RenderError::Internal("PDF sheet end outside a sheet"));
        };
        if totals.iter().any(Option::is_some) {
            let mut lines: Vec<Vec<String>> = vec![Vec::new(); totals.len()];
            let mut right = vec![true; totals.len()];
            if let Some(free) = totals.iter().position(Option::is_none) {
                lines[free].push(locale::total_label(self.locale).to_string());
                right[free] = false;
            }
            for (c, total) in totals.iter().enumerate() {
                if let Some(total) = total {
                    let text = locale::total(total, &table.columns[c], self.locale);
                    let inner = table.xs[c].1 - 2.0 * CELL_PAD_X;
                    lines[c].push(if self.metrics.width(&text, FONT_SIZE) <= inner {
                        text
                    } else {
                        ellipsize(&self.metrics, &text, inner)
                    });
                }
            }
            self.place_row(&mut lines, &right, Some(0.85))?;
        }
        self.table = None;
        Ok(())
    }
}

impl PdfSink {
    fn set_size(&mut self, size: f32) {
        if !self.drawing_pass() {
            return;
        }
        let font = self.font.clone();
        self.page().text.push(Op::SetFont {
            font,
            size: Pt(size),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{ELLIPSIS, FONT_SIZE, Metrics, ellipsize, wrap};

    #[test]
    fn wrapping_measures_real_glyph_widths() {
        let metrics = Metrics::load().unwrap();
        // Same character count, very different widths in DejaVu Sans.
        let narrow = "iiii iiii iiii iiii";
        let wide = "WWWW WWWW WWWW WWWW";
        let width = metrics.width("WWWW WWWW", FONT_SIZE) + 1.0;
        assert_eq!(wrap(&metrics, narrow, width, 3), vec![narrow.to_string()]);
        let lines = wrap(&metrics, wide, width, 3);
        assert_eq!(
            lines,
            vec!["WWWW WWWW".to_string(), "WWWW WWWW".to_string()]
        );
        for line in &lines {
            assert!(metrics.width(line, FONT_SIZE) <= width);
        }
    }

    #[test]
    fn text_past_the_line_limit_ends_with_an_ellipsis_that_fits() {
        let metrics = Metrics::load().unwrap();
        let width = 60.0;
        let lines = wrap(&metrics, &"palavra ".repeat(50), width, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines[2].ends_with(ELLIPSIS));
        assert!(lines.iter().all(|l| metrics.width(l, FONT_SIZE) <= width));
        let cut = ellipsize(&metrics, "1.234.567.890,00", 20.0);
        assert!(cut.ends_with(ELLIPSIS) && metrics.width(&cut, FONT_SIZE) <= 20.0);
    }

    #[test]
    fn ellipsize_keeps_the_longest_prefix_that_fits() {
        let metrics = Metrics::load().unwrap();
        let text = "Açaí 1.234.567,89 😀 WWW iii";
        for width in [0.0, 5.0, 12.0, 30.0, 55.0, 80.0] {
            let cut = ellipsize(&metrics, text, width);
            let kept = cut.strip_suffix(ELLIPSIS).unwrap();
            assert!(text.starts_with(kept));
            if !kept.is_empty() {
                assert!(metrics.width(&cut, FONT_SIZE) <= width, "{cut} in {width}");
            }
            // One character more would not fit.
            if let Some(next) = text[kept.len()..].chars().next() {
                let longer = format!("{kept}{next}{ELLIPSIS}");
                assert!(
                    metrics.width(&longer, FONT_SIZE) > width,
                    "{longer} in {width}"
                );
            }
        }
    }

    #[test]
    fn zero_width_characters_wrap_in_linear_time() {
        // Combining marks have no advance: a line of them never fills, and
        // measuring it again per character would take ~10^9 steps here.
        let metrics = Metrics::load().unwrap();
        let marks = "\u{301}".repeat(200_000);
        let lines = wrap(&metrics, &marks, 10.0, 3);
        assert_eq!(lines.concat().chars().count(), 200_000);
    }
}
