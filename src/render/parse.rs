//! The one streaming reader of documents: checks every value and feeds typed rows to a [`Sink`].
//!
//! Validation and rendering both run through [`parse`]; only the sink differs
//! (a no-op for `validate`, a writer for XLSX or PDF). Rows are never
//! collected: each row is parsed into one reused buffer, handed to the sink and
//! forgotten, so memory does not depend on the row count.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::model::{
    Accumulator, Cell, Column, ColumnType, DocSettings, Locale, PdfOptions, RawColumn, Total,
    TotalFn,
};
use super::{Limits, RenderError, Summary, ValidationError};

/// The most data rows a worksheet holds below its header row (Excel's
/// 1,048,576 rows minus one); applies whatever `Limits::max_rows` says so
/// that every valid document also renders as XLSX.
pub const EXCEL_MAX_DATA_ROWS: u64 = 1_048_575;
/// The most columns a worksheet holds.
pub const EXCEL_MAX_COLUMNS: usize = 16_384;
/// Longest sheet name Excel accepts, in UTF-16 code units (Excel's count: a
/// character outside the Basic Multilingual Plane, such as an emoji, is 2).
pub const MAX_SHEET_NAME_CHARS: usize = 31;
/// Longest text a worksheet cell (or column title) holds, in UTF-16 code
/// units; applies whatever `Limits::max_cell_chars` says.
pub const EXCEL_MAX_CELL_CHARS: usize = 32_767;
/// Longest Excel number format, in UTF-16 code units.
pub const MAX_FORMAT_CHARS: usize = 255;
/// Most decimal places a number format may ask for: Excel's own limit, and
/// what keeps a PDF cell of `1e308` to a few hundred characters.
pub const MAX_FORMAT_DECIMALS: usize = 30;
/// Rows parsed between two looks at the render deadline.
const DEADLINE_EVERY_ROWS: u64 = 256;

/// Length of `s` as Excel counts it: UTF-16 code units.
pub(crate) fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Whether `s` is longer than `max` UTF-16 code units; skips the count when
/// the byte length already proves it short (a UTF-16 unit never takes fewer
/// UTF-8 bytes than one).
fn over_utf16(s: &str, max: usize) -> Option<usize> {
    if s.len() <= max {
        return None;
    }
    let units = utf16_len(s);
    (units > max).then_some(units)
}

/// When a render must give up, and the timeout it came from (for the error).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub at: Instant,
    pub timeout: Duration,
}

impl Deadline {
    /// A deadline `timeout` from now; `None` without a timeout.
    pub fn after(timeout: Option<Duration>) -> Option<Deadline> {
        timeout.map(|timeout| Deadline {
            at: Instant::now() + timeout,
            timeout,
        })
    }
}

/// How one pass of [`parse`] runs.
#[derive(Clone, Copy)]
pub(crate) struct Pass<'a> {
    pub limits: &'a Limits,
    pub deadline: Option<Deadline>,
    /// Whether the sink uses `locale` and `pdf` (the PDF does; validation and
    /// XLSX do not, so for them those keys may come anywhere at no cost).
    pub needs_settings: bool,
    /// What a first pass ([`read_heads`]) learnt of a document whose keys are
    /// out of order; `None` on the first try.
    pub heads: Option<&'a Heads>,
}

impl<'a> Pass<'a> {
    /// A first try: no heads known yet.
    pub fn new(limits: &'a Limits, deadline: Option<Deadline>, needs_settings: bool) -> Self {
        Pass {
            limits,
            deadline,
            needs_settings,
            heads: None,
        }
    }
}

/// Why [`parse`] stopped without a result.
pub(crate) enum Stop {
    /// The document is invalid or the sink failed.
    Failed(RenderError),
    /// The document's keys are out of order (`rows` before `columns` or
    /// `name`, or `sheets` before `locale`/`pdf` for a sink that needs them):
    /// run [`read_heads`] and parse again with its result.
    NeedsHeads,
}

impl From<RenderError> for Stop {
    fn from(e: RenderError) -> Self {
        Stop::Failed(e)
    }
}

/// What must be known before rows stream: the document's settings and each
/// sheet's name and columns, read by a first pass that skips every row.
#[derive(Default)]
pub(crate) struct Heads {
    settings: DocSettings,
    sheets: Vec<SheetPre>,
}

/// One sheet's part of [`Heads`].
struct SheetPre {
    name: Option<String>,
    head: SheetHead,
}

/// Where parsed rows go. Called in document order: `begin_sheet`, every
/// `row`, `end_sheet`, for each sheet.
pub(crate) trait Sink {
    fn begin_sheet(
        &mut self,
        settings: &DocSettings,
        name: &str,
        columns: &[Column],
    ) -> Result<(), RenderError>;
    fn row(&mut self, cells: &[Cell]) -> Result<(), RenderError>;
    /// `totals` has one entry per column; `None` where the column has no total.
    fn end_sheet(&mut self, rows: u64, totals: &[Option<Total>]) -> Result<(), RenderError>;
}

/// The sink of `validate`: parsing already checks everything.
pub(crate) struct NullSink;

impl Sink for NullSink {
    fn begin_sheet(&mut self, _: &DocSettings, _: &str, _: &[Column]) -> Result<(), RenderError> {
        Ok(())
    }
    fn row(&mut self, _: &[Cell]) -> Result<(), RenderError> {
        Ok(())
    }
    fn end_sheet(&mut self, _: u64, _: &[Option<Total>]) -> Result<(), RenderError> {
        Ok(())
    }
}

/// What a successful parse learnt that renderers need at the end.
pub(crate) struct Parsed {
    pub summary: Summary,
    pub title: Option<String>,
}

/// Reads a whole document from `de`, feeding `sink`.
pub(crate) fn parse<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    pass: &Pass<'_>,
    sink: &mut dyn Sink,
) -> Result<Parsed, Stop> {
    let mut ctx = Ctx::new(pass, sink, false);
    let result = run(&mut ctx, de);
    match result {
        Ok(()) => Ok(Parsed {
            summary: ctx.summary,
            title: ctx.settings.title,
        }),
        Err(_) if ctx.needs_heads => Err(Stop::NeedsHeads),
        Err(e) => Err(Stop::Failed(ctx.failure(e))),
    }
}

/// The first pass for a document whose keys are out of order: validates the
/// settings and every sheet's name and columns, skipping rows, so that the
/// next [`parse`] knows them before the rows arrive.
pub(crate) fn read_heads<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    pass: &Pass<'_>,
) -> Result<Heads, RenderError> {
    let mut sink = NullSink;
    let mut ctx = Ctx::new(pass, &mut sink, true);
    match run(&mut ctx, de) {
        Ok(()) => Ok(Heads {
            settings: ctx.settings,
            sheets: ctx.collected,
        }),
        Err(e) => Err(ctx.failure(e)),
    }
}

fn run<'de, R: serde_json::de::Read<'de>>(
    ctx: &mut Ctx<'_>,
    de: &mut serde_json::Deserializer<R>,
) -> Result<(), serde_json::Error> {
    DocSeed(ctx).deserialize(&mut *de).and_then(|()| de.end())
}

/// The innermost place the parser was at, for errors serde itself raises
/// (syntax errors, truncated input).
#[derive(Default)]
struct Loc {
    sheet: Option<usize>,
    field: Option<&'static str>,
    row: Option<u64>,
}

impl Loc {
    fn path(&self) -> String {
        match (self.sheet, self.field, self.row) {
            (None, _, _) => "document".to_string(),
            (Some(s), None, _) => format!("sheets[{s}]"),
            (Some(s), Some(f), None) => format!("sheets[{s}].{f}"),
            (Some(s), Some(f), Some(r)) => format!("sheets[{s}].{f}[{r}]"),
        }
    }
}

struct Ctx<'a> {
    limits: &'a Limits,
    sink: &'a mut dyn Sink,
    deadline: Option<Deadline>,
    needs_settings: bool,
    heads: Option<&'a Heads>,
    /// The first pass of an out-of-order document: collect heads, skip rows.
    heads_only: bool,
    collected: Vec<SheetPre>,
    /// Set when the keys are out of order and no heads are known yet.
    needs_heads: bool,
    /// The real reason parsing stopped; serde only carries a placeholder.
    abort: Option<RenderError>,
    settings: DocSettings,
    sheets_started: bool,
    /// Lowercased, because Excel compares sheet names case-insensitively.
    sheet_names: HashSet<String>,
    summary: Summary,
    loc: Loc,
}

impl<'a> Ctx<'a> {
    fn new(pass: &Pass<'a>, sink: &'a mut dyn Sink, heads_only: bool) -> Self {
        Ctx {
            limits: pass.limits,
            sink,
            deadline: pass.deadline,
            needs_settings: pass.needs_settings,
            heads: pass.heads,
            heads_only,
            collected: Vec::new(),
            needs_heads: false,
            abort: None,
            settings: DocSettings::default(),
            sheets_started: false,
            sheet_names: HashSet::new(),
            summary: Summary { sheets: 0, rows: 0 },
            loc: Loc::default(),
        }
    }

    /// The error a failed pass reports: the recorded reason, else serde's.
    fn failure(&mut self, e: serde_json::Error) -> RenderError {
        match self.abort.take() {
            Some(abort) => abort,
            // Reading the payload failed: not the document's fault, retryable.
            None if e.is_io() => RenderError::Io(e.into()),
            None => RenderError::Invalid(ValidationError {
                path: self.loc.path(),
                message: e.to_string(),
            }),
        }
    }

    /// Stops the pass so the caller can read the heads first.
    fn restart<E: de::Error>(&mut self) -> E {
        self.needs_heads = true;
        E::custom("keys out of order")
    }

    /// Fails with [`RenderError::TimedOut`] once the deadline has passed.
    fn check_deadline<E: de::Error>(&mut self) -> Result<(), E> {
        match self.deadline {
            Some(d) if Instant::now() >= d.at => {
                if self.abort.is_none() {
                    self.abort = Some(RenderError::TimedOut {
                        seconds: d.timeout.as_secs_f64(),
                    });
                }
                Err(E::custom("render timed out"))
            }
            _ => Ok(()),
        }
    }

    /// The text limit in UTF-16 units: the configured one, at most Excel's.
    fn max_text(&self) -> usize {
        self.limits.max_cell_chars.min(EXCEL_MAX_CELL_CHARS)
    }

    /// Checks a text against [`Ctx::max_text`], saying which limit it broke.
    fn check_text<E: de::Error>(
        &mut self,
        text: &str,
        what: &str,
        path: impl FnOnce() -> String,
    ) -> Result<(), E> {
        let max = self.max_text();
        let Some(units) = over_utf16(text, max) else {
            return Ok(());
        };
        let which = if max < self.limits.max_cell_chars {
            "the most an Excel cell holds"
        } else {
            "max_cell_chars"
        };
        Err(self.invalid(
            path(),
            format!(
                "{what} is {units} UTF-16 units, over the limit of {max} ({which}; Excel counts an emoji as 2)"
            ),
        ))
    }

    /// Records a validation failure and returns the error that unwinds serde.
    fn invalid<E: de::Error>(&mut self, path: String, message: impl Into<String>) -> E {
        if self.abort.is_none() {
            self.abort = Some(RenderError::Invalid(ValidationError {
                path,
                message: message.into(),
            }));
        }
        E::custom("invalid document")
    }

    /// Records the error of a serde-derived field, unless a deeper one is known.
    fn wrap<E: de::Error>(&mut self, path: impl FnOnce() -> String, error: E) -> E {
        if self.abort.is_none() {
            let message = error.to_string();
            return self.invalid(path(), message);
        }
        error
    }

    fn sink_failed<E: de::Error>(&mut self, error: RenderError) -> E {
        if self.abort.is_none() {
            self.abort = Some(error);
        }
        E::custom("renderer failed")
    }
}

/// Describes a JSON value in an error message the way a user wrote it.
fn quote(s: &str) -> String {
    const MAX: usize = 40;
    let mut shown: String = s.chars().take(MAX).collect();
    if shown.len() < s.len() {
        shown.push('…');
    }
    serde_json::to_string(&shown).unwrap_or(shown)
}

struct DocSeed<'c, 'a>(&'c mut Ctx<'a>);

impl<'de> DeserializeSeed<'de> for DocSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a document object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.0;
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(ctx.invalid(key, "duplicate field"));
            }
            match key.as_str() {
                "title" => {
                    let title: String = map
                        .next_value()
                        .map_err(|e| ctx.wrap(|| "title".into(), e))?;
                    ctx.check_text(&title, "title", || "title".into())?;
                    ctx.settings.title = Some(title);
                }
                // Late settings: validation and XLSX ignore them, the PDF
                // needs them before its first row, so it reads them first.
                "locale" | "pdf"
                    if ctx.sheets_started
                        && ctx.needs_settings
                        && ctx.heads.is_none()
                        && !ctx.heads_only =>
                {
                    return Err(ctx.restart());
                }
                "locale" => {
                    let tag: String = map
                        .next_value()
                        .map_err(|e| ctx.wrap(|| "locale".into(), e))?;
                    ctx.settings.locale = Locale::parse(&tag).ok_or_else(|| {
                        ctx.invalid::<A::Error>(
                            "locale".into(),
                            format!(
                                "unsupported locale {}, expected one of {}",
                                quote(&tag),
                                Locale::NAMES
                            ),
                        )
                    })?;
                }
                "pdf" => {
                    ctx.settings.pdf = map
                        .next_value::<PdfOptions>()
                        .map_err(|e| ctx.wrap(|| "pdf".into(), e))?;
                }
                "sheets" => {
                    ctx.sheets_started = true;
                    if let Some(heads) = ctx.heads {
                        ctx.settings.locale = heads.settings.locale;
                        ctx.settings.pdf = heads.settings.pdf;
                    }
                    map.next_value_seed(SheetsSeed(&mut *ctx))?;
                }
                _ => {
                    return Err(ctx.invalid(
                        key,
                        "unknown field, expected one of title, locale, pdf, sheets",
                    ));
                }
            }
        }
        if !ctx.sheets_started {
            return Err(ctx.invalid("sheets".into(), "missing field"));
        }
        Ok(())
    }
}

struct SheetsSeed<'c, 'a>(&'c mut Ctx<'a>);

impl<'de> DeserializeSeed<'de> for SheetsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SheetsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of sheets")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ctx = self.0;
        let mut index = 0;
        while seq
            .next_element_seed(SheetSeed {
                ctx: &mut *ctx,
                index,
            })?
            .is_some()
        {
            index += 1;
        }
        if index == 0 {
            return Err(ctx.invalid("sheets".into(), "a document needs at least one sheet"));
        }
        Ok(())
    }
}

/// Excel's rules for worksheet names (those rust_xlsxwriter's `set_name`
/// enforces, plus "History"), checked here so the XLSX writer never refuses a
/// validated document.
fn check_sheet_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("sheet name is empty".into());
    }
    if let Some(units) = over_utf16(name, MAX_SHEET_NAME_CHARS) {
        return Err(format!(
            "sheet name {} is {units} UTF-16 units, Excel allows at most {MAX_SHEET_NAME_CHARS} (it counts an emoji as 2)",
            quote(name)
        ));
    }
    if let Some(bad) = name.chars().find(|c| "[]:*?/\\".contains(*c)) {
        return Err(format!(
            "sheet name {} contains '{bad}', which Excel does not allow (any of []:*?/\\)",
            quote(name)
        ));
    }
    if name.starts_with('\'') || name.ends_with('\'') {
        return Err(format!(
            "sheet name {} starts or ends with an apostrophe, which Excel does not allow",
            quote(name)
        ));
    }
    if name.eq_ignore_ascii_case("history") {
        return Err("sheet name \"History\" is reserved by Excel".into());
    }
    Ok(())
}

/// The parts of a sheet known before its rows.
#[derive(Clone)]
struct SheetHead {
    index: usize,
    columns: Vec<Column>,
    titles: HashMap<String, usize>,
}

struct SheetSeed<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for SheetSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.index >= self.ctx.limits.max_sheets {
            let max = self.ctx.limits.max_sheets;
            return Err(self.ctx.invalid(
                format!("sheets[{}]", self.index),
                format!("more than {max} sheets, over the limit of {max} (max_sheets)"),
            ));
        }
        self.ctx.check_deadline()?;
        self.ctx.loc = Loc {
            sheet: Some(self.index),
            ..Loc::default()
        };
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SheetSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sheet object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (ctx, i) = (self.ctx, self.index);
        let mut name: Option<String> = None;
        let mut head: Option<SheetHead> = None;
        let mut totals: Option<BTreeMap<String, String>> = None;
        let mut rows: Option<(u64, Vec<Accumulator>)> = None;
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(ctx.invalid(format!("sheets[{i}].{key}"), "duplicate field"));
            }
            match key.as_str() {
                // After the rows with heads known: the first pass read (and
                // checked) them, and the rows already used them.
                "name" | "columns" if rows.is_some() && ctx.heads.is_some() => {
                    map.next_value::<IgnoredAny>()?;
                }
                // The sheet began under a default name: start again knowing it.
                "name" if rows.is_some() => return Err(ctx.restart()),
                "name" => {
                    let value: String = map
                        .next_value()
                        .map_err(|e| ctx.wrap(|| format!("sheets[{i}].name"), e))?;
                    check_sheet_name(&value)
                        .map_err(|m| ctx.invalid::<A::Error>(format!("sheets[{i}].name"), m))?;
                    name = Some(value);
                }
                "columns" => {
                    ctx.loc.field = Some("columns");
                    let raw: Vec<RawColumn> = map.next_value_seed(ColumnsSeed {
                        ctx: &mut *ctx,
                        sheet: i,
                    })?;
                    head = Some(check_columns(ctx, i, raw)?);
                    ctx.loc.field = None;
                }
                "rows" if ctx.heads_only => {
                    map.next_value::<IgnoredAny>()?;
                }
                "rows" => {
                    if head.is_none() || name.is_none() {
                        match ctx.heads.and_then(|h| h.sheets.get(i)) {
                            Some(pre) => {
                                head = head.or_else(|| Some(pre.head.clone()));
                                name = name.or_else(|| pre.name.clone());
                            }
                            // Only the columns are missing so far: they may
                            // still come (or the sheet has none: an error).
                            None if head.is_none() => return Err(ctx.restart()),
                            None => {}
                        }
                    }
                    let Some(head) = head.as_ref() else {
                        return Err(
                            ctx.invalid(format!("sheets[{i}]"), "missing field \"columns\"")
                        );
                    };
                    begin_sheet(ctx, i, name.as_deref(), head)?;
                    ctx.loc.field = Some("rows");
                    let mut state = RowsState {
                        head,
                        count: 0,
                        cells: Vec::with_capacity(head.columns.len()),
                        seen: vec![false; head.columns.len()],
                        totals: vec![Accumulator::default(); head.columns.len()],
                    };
                    map.next_value_seed(RowsSeed {
                        ctx: &mut *ctx,
                        state: &mut state,
                    })?;
                    ctx.loc.field = None;
                    ctx.loc.row = None;
                    rows = Some((state.count, state.totals));
                }
                "totals" => {
                    totals = Some(
                        map.next_value()
                            .map_err(|e| ctx.wrap(|| format!("sheets[{i}].totals"), e))?,
                    );
                }
                _ => {
                    return Err(ctx.invalid(
                        format!("sheets[{i}].{key}"),
                        "unknown field, expected one of name, columns, rows, totals",
                    ));
                }
            }
        }
        let Some(head) = head else {
            return Err(ctx.invalid(format!("sheets[{i}]"), "missing field \"columns\""));
        };
        if ctx.heads_only {
            ctx.collected.push(SheetPre { name, head });
            return Ok(());
        }
        let (count, accumulators) = match rows {
            Some(done) => done,
            None => {
                begin_sheet(ctx, i, name.as_deref(), &head)?;
                (0, vec![Accumulator::default(); head.columns.len()])
            }
        };
        let totals = check_totals(ctx, &head, totals.unwrap_or_default(), count, &accumulators)?;
        ctx.summary.sheets += 1;
        ctx.summary.rows += count;
        let ctx_sink = &mut *ctx.sink;
        if let Err(e) = ctx_sink.end_sheet(count, &totals) {
            return Err(ctx.sink_failed(e));
        }
        Ok(())
    }
}

fn begin_sheet<E: de::Error>(
    ctx: &mut Ctx<'_>,
    i: usize,
    name: Option<&str>,
    head: &SheetHead,
) -> Result<(), E> {
    let default_name;
    let name = match name {
        Some(n) => n,
        None => {
            default_name = format!("Sheet{}", i + 1);
            &default_name
        }
    };
    if !ctx.sheet_names.insert(name.to_lowercase()) {
        return Err(ctx.invalid(
            format!("sheets[{i}].name"),
            format!(
                "sheet name {} is already used by another sheet (Excel compares names case-insensitively)",
                quote(name)
            ),
        ));
    }
    let settings = ctx.settings.clone();
    if let Err(e) = ctx.sink.begin_sheet(&settings, name, &head.columns) {
        return Err(ctx.sink_failed(e));
    }
    Ok(())
}

fn check_columns<E: de::Error>(
    ctx: &mut Ctx<'_>,
    i: usize,
    raw: Vec<RawColumn>,
) -> Result<SheetHead, E> {
    let max = ctx.limits.max_columns.min(EXCEL_MAX_COLUMNS);
    if raw.is_empty() {
        return Err(ctx.invalid(
            format!("sheets[{i}].columns"),
            "a sheet needs at least one column",
        ));
    }
    if raw.len() > max {
        return Err(ctx.invalid(
            format!("sheets[{i}].columns"),
            format!(
                "{} columns, over the limit of {max} (max_columns)",
                raw.len()
            ),
        ));
    }
    let mut titles = HashMap::with_capacity(raw.len());
    let mut columns = Vec::with_capacity(raw.len());
    for (c, col) in raw.into_iter().enumerate() {
        let path = format!("sheets[{i}].columns[{c}]");
        if col.title.trim().is_empty() {
            return Err(ctx.invalid(format!("{path}.title"), "column title is empty"));
        }
        ctx.check_text(&col.title, "column title", || format!("{path}.title"))?;
        if titles.insert(col.title.clone(), c).is_some() {
            return Err(ctx.invalid(
                format!("{path}.title"),
                format!(
                    "duplicate column title {} (rows may be keyed by title)",
                    quote(&col.title)
                ),
            ));
        }
        let Some(kind) = ColumnType::parse(&col.kind) else {
            return Err(ctx.invalid(
                format!("{path}.type"),
                format!(
                    "unknown column type {}, expected one of {}",
                    quote(&col.kind),
                    ColumnType::NAMES
                ),
            ));
        };
        // Checked as the renderers use it: an f32 (the PDF) that must stay
        // positive, so `1e-300` does not become a zero-width column.
        if let Some(width) = col.width
            && !(width <= 255.0 && (width as f32).is_finite() && width as f32 > 0.0)
        {
            return Err(ctx.invalid(
                format!("{path}.width"),
                format!(
                    "width {width:?} is out of range, expected more than 0 and at most 255 characters"
                ),
            ));
        }
        if let Some(format) = &col.format {
            check_format(format).map_err(|m| ctx.invalid::<E>(format!("{path}.format"), m))?;
        }
        columns.push(Column {
            title: col.title,
            kind,
            format: col.format,
            width: col.width,
        });
    }
    Ok(SheetHead {
        index: i,
        columns,
        titles,
    })
}

/// Excel's limits on a number format, and ours on what it may print.
fn check_format(format: &str) -> Result<(), String> {
    if format.trim().is_empty() {
        return Err("format is empty, expected an Excel number format such as #,##0.00".into());
    }
    if let Some(units) = over_utf16(format, MAX_FORMAT_CHARS) {
        return Err(format!(
            "format is {units} UTF-16 units, Excel allows at most {MAX_FORMAT_CHARS}"
        ));
    }
    for section in format.split(';') {
        let decimals = super::model::decimals_of(section);
        if decimals > MAX_FORMAT_DECIMALS {
            return Err(format!(
                "format {} asks for {decimals} decimal places, Excel allows at most {MAX_FORMAT_DECIMALS}",
                quote(format)
            ));
        }
    }
    Ok(())
}

fn check_totals<E: de::Error>(
    ctx: &mut Ctx<'_>,
    head: &SheetHead,
    raw: BTreeMap<String, String>,
    rows: u64,
    accumulators: &[Accumulator],
) -> Result<Vec<Option<Total>>, E> {
    let i = head.index;
    let mut totals = vec![None; head.columns.len()];
    if !raw.is_empty() && rows + 2 > EXCEL_MAX_DATA_ROWS + 1 {
        return Err(ctx.invalid(
            format!("sheets[{i}].totals"),
            format!(
                "no room for a totals row below {rows} rows (a worksheet holds {} rows)",
                EXCEL_MAX_DATA_ROWS + 1
            ),
        ));
    }
    for (title, function) in raw {
        let path = format!("sheets[{i}].totals[{}]", quote(&title));
        let Some(&c) = head.titles.get(&title) else {
            return Err(ctx.invalid(path, "unknown column"));
        };
        let Some(f) = TotalFn::parse(&function) else {
            return Err(ctx.invalid(
                path,
                format!(
                    "unknown function {}, expected one of {}",
                    quote(&function),
                    TotalFn::NAMES
                ),
            ));
        };
        let column = &head.columns[c];
        if f != TotalFn::Count && !column.kind.is_numeric() {
            return Err(ctx.invalid(
                path,
                format!(
                    "{function} needs a number, integer or percent column, this one is {}",
                    column.kind.expected()
                ),
            ));
        }
        let value = accumulators[c].result(f);
        totals[c] = Some(Total { function: f, value });
    }
    Ok(totals)
}

struct ColumnsSeed<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    sheet: usize,
}

impl<'de> DeserializeSeed<'de> for ColumnsSeed<'_, '_> {
    type Value = Vec<RawColumn>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ColumnsSeed<'_, '_> {
    type Value = Vec<RawColumn>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of columns")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut columns = Vec::new();
        loop {
            let c = columns.len();
            if c > self.ctx.limits.max_columns.min(EXCEL_MAX_COLUMNS) {
                // Past the limit: count the rest without keeping them.
                let mut count = c;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                let max = self.ctx.limits.max_columns.min(EXCEL_MAX_COLUMNS);
                return Err(self.ctx.invalid(
                    format!("sheets[{}].columns", self.sheet),
                    format!("{count} columns, over the limit of {max} (max_columns)"),
                ));
            }
            match seq.next_element::<RawColumn>() {
                Ok(Some(col)) => columns.push(col),
                Ok(None) => return Ok(columns),
                Err(e) => {
                    let sheet = self.sheet;
                    return Err(self.ctx.wrap(|| format!("sheets[{sheet}].columns[{c}]"), e));
                }
            }
        }
    }
}

struct RowsState<'h> {
    head: &'h SheetHead,
    count: u64,
    cells: Vec<Cell>,
    seen: Vec<bool>,
    totals: Vec<Accumulator>,
}

struct RowsSeed<'c, 'a, 's, 'h> {
    ctx: &'c mut Ctx<'a>,
    state: &'s mut RowsState<'h>,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (ctx, state) = (self.ctx, self.state);
        let max = (ctx.limits.max_rows as u64).min(EXCEL_MAX_DATA_ROWS);
        loop {
            if state.count % DEADLINE_EVERY_ROWS == 0 {
                ctx.check_deadline()?;
            }
            ctx.loc.row = Some(state.count);
            let more = seq.next_element_seed(RowSeed {
                ctx: &mut *ctx,
                state: &mut *state,
                max,
            })?;
            if more.is_none() {
                return Ok(());
            }
            for (cell, acc) in state.cells.iter().zip(state.totals.iter_mut()) {
                if let Some(v) = cell.as_f64() {
                    acc.add(v);
                } else if matches!(cell, Cell::Date(_) | Cell::DateTime(_)) {
                    // Dates are numbers to a spreadsheet's COUNT.
                    acc.count_one();
                }
            }
            if let Err(e) = ctx.sink.row(&state.cells) {
                return Err(ctx.sink_failed(e));
            }
            state.count += 1;
        }
    }
}

struct RowSeed<'c, 'a, 's, 'h> {
    ctx: &'c mut Ctx<'a>,
    state: &'s mut RowsState<'h>,
    max: u64,
}

impl RowSeed<'_, '_, '_, '_> {
    fn path(&self) -> String {
        format!(
            "sheets[{}].rows[{}]",
            self.state.head.index, self.state.count
        )
    }
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.state.count >= self.max {
            let path = self.path();
            let max = self.max;
            let reason = if max == EXCEL_MAX_DATA_ROWS && (self.ctx.limits.max_rows as u64) > max {
                format!("more than {max} rows, the most a worksheet holds below its header")
            } else {
                format!("more than {max} rows in a sheet, over the limit of {max} (max_rows)")
            };
            return Err(self.ctx.invalid(path, reason));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row (an array of cells or an object keyed by column title)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let path = self.path();
        let (ctx, state) = (self.ctx, self.state);
        let columns = &state.head.columns;
        state.cells.clear();
        while let Some(column) = columns.get(state.cells.len()) {
            let c = state.cells.len();
            let seed = CellSeed {
                ctx: &mut *ctx,
                column,
                path: &|| format!("{path}[{c}]"),
            };
            match seq.next_element_seed(seed)? {
                Some(cell) => state.cells.push(cell),
                None => {
                    return Err(ctx.invalid(
                        path,
                        format!(
                            "expected {} cells, got {}",
                            columns.len(),
                            state.cells.len()
                        ),
                    ));
                }
            }
        }
        let mut extra = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            extra += 1;
        }
        if extra > 0 {
            return Err(ctx.invalid(
                path,
                format!(
                    "expected {} cells, got {}",
                    columns.len(),
                    columns.len() + extra
                ),
            ));
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let path = self.path();
        let (ctx, state) = (self.ctx, self.state);
        let head = state.head;
        state.cells.clear();
        state.cells.resize(head.columns.len(), Cell::Null);
        state.seen.iter_mut().for_each(|s| *s = false);
        while let Some(key) = map.next_key::<KeyName>()? {
            let Some(&c) = head.titles.get(key.0.as_ref()) else {
                return Err(ctx.invalid(path, format!("unknown column {}", quote(&key.0))));
            };
            if std::mem::replace(&mut state.seen[c], true) {
                return Err(ctx.invalid(path, format!("duplicate column {}", quote(&key.0))));
            }
            let seed = CellSeed {
                ctx: &mut *ctx,
                column: &head.columns[c],
                path: &|| format!("{path}[{}]", quote(&key.0)),
            };
            state.cells[c] = map.next_value_seed(seed)?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let path = self.path();
        Err(self.ctx.invalid(
            path,
            format!("expected a row (array or object), got {}", quote(v)),
        ))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let path = self.path();
        Err(self
            .ctx
            .invalid(path, format!("expected a row (array or object), got {v}")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        let path = self.path();
        Err(self
            .ctx
            .invalid(path, format!("expected a row (array or object), got {v}")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        let path = self.path();
        Err(self
            .ctx
            .invalid(path, "expected a row (array or object), got null"))
    }
}

/// A map key read without allocating when the input allows borrowing.
struct KeyName<'de>(std::borrow::Cow<'de, str>);

impl<'de> de::Deserialize<'de> for KeyName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a column title")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyName(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Largest integer a spreadsheet (an f64) stores exactly: 2^53.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

struct CellSeed<'c, 'a, 'p> {
    ctx: &'c mut Ctx<'a>,
    column: &'p Column,
    path: &'p dyn Fn() -> String,
}

impl CellSeed<'_, '_, '_> {
    fn mismatch<E: de::Error>(self, got: String) -> E {
        let path = (self.path)();
        self.ctx.invalid(
            path,
            format!("expected {}, got {got}", self.column.kind.expected()),
        )
    }

    fn check_year<E: de::Error>(self, date: NaiveDate, cell: Cell) -> Result<Cell, E> {
        let first = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or_default();
        let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or_default();
        if date < first || date > last {
            let path = (self.path)();
            return Err(self.ctx.invalid(
                path,
                format!(
                    "date {date} is outside 1900-01-01..9999-12-31, the dates a spreadsheet stores"
                ),
            ));
        }
        Ok(cell)
    }
}

impl<'de> DeserializeSeed<'de> for CellSeed<'_, '_, '_> {
    type Value = Cell;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cell, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed<'_, '_, '_> {
    type Value = Cell;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} or null", self.column.kind.expected())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Cell, E> {
        Ok(Cell::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Cell, E> {
        match self.column.kind {
            ColumnType::Boolean => Ok(Cell::Boolean(v)),
            _ => Err(self.mismatch(v.to_string())),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cell, E> {
        match self.column.kind {
            ColumnType::Integer if v.unsigned_abs() <= 1 << 53 => Ok(Cell::Integer(v)),
            ColumnType::Integer => {
                let path = (self.path)();
                Err(self.ctx.invalid(
                    path,
                    format!(
                        "integer {v} is larger than 2^53, the largest a spreadsheet stores exactly"
                    ),
                ))
            }
            ColumnType::Number => Ok(Cell::Number(v as f64)),
            ColumnType::Percent => Ok(Cell::Percent(v as f64)),
            _ => Err(self.mismatch(v.to_string())),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cell, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => self.visit_f64(v as f64),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cell, E> {
        match self.column.kind {
            ColumnType::Number => Ok(Cell::Number(v)),
            ColumnType::Percent => Ok(Cell::Percent(v)),
            ColumnType::Integer if v.fract() == 0.0 && v.abs() <= MAX_EXACT_INTEGER => {
                Ok(Cell::Integer(v as i64))
            }
            _ => Err(self.mismatch(v.to_string())),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cell, E> {
        match self.column.kind {
            ColumnType::Text => {
                let path = self.path;
                self.ctx.check_text(v, "text", path)?;
                Ok(Cell::Text(v.to_owned()))
            }
            ColumnType::Date => match NaiveDate::parse_from_str(v, "%Y-%m-%d") {
                Ok(d) if v.len() == 10 => self.check_year(d, Cell::Date(d)),
                _ => Err(self.mismatch(quote(v))),
            },
            ColumnType::DateTime => match DateTime::parse_from_rfc3339(v) {
                Ok(t) => {
                    let local = t.naive_local();
                    self.check_year(local.date(), Cell::DateTime(local))
                }
                Err(_) => Err(self.mismatch(quote(v))),
            },
            _ => Err(self.mismatch(quote(v))),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Cell, A::Error> {
        Err(self.mismatch("an array".into()))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Cell, A::Error> {
        Err(self.mismatch("an object".into()))
    }
}
