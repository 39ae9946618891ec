//! How the PDF prints numbers, dates, booleans and its own words in each supported locale.

use super::model::{Cell, Column, ColumnType, Locale, Total, TotalFn};

/// `1234.5` with 2 decimals: `1.234,50` in pt-BR, `1,234.50` in en-US.
pub(crate) fn number(value: f64, decimals: usize, locale: Locale) -> String {
    let (group, point) = match locale {
        Locale::PtBr => ('.', ','),
        Locale::EnUs => (',', '.'),
    };
    let fixed = format!("{:.*}", decimals, value.abs());
    let (int_part, frac_part) = match fixed.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (fixed.as_str(), None),
    };
    let mut out = String::with_capacity(fixed.len() + fixed.len() / 3 + 1);
    // "-0,00" would look like a debt: only print the sign for a visible value.
    if value < 0.0 && fixed.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        out.push('-');
    }
    let digits = int_part.len();
    for (i, d) in int_part.chars().enumerate() {
        if i > 0 && (digits - i) % 3 == 0 {
            out.push(group);
        }
        out.push(d);
    }
    if let Some(frac) = frac_part {
        out.push(point);
        out.push_str(frac);
    }
    out
}

/// The text a cell shows in the PDF.
pub(crate) fn cell(cell: &Cell, column: &Column, locale: Locale) -> String {
    match cell {
        Cell::Null => String::new(),
        Cell::Text(s) => s.clone(),
        Cell::Number(n) => number(*n, column.decimals(), locale),
        Cell::Integer(i) => number(*i as f64, column.decimals(), locale),
        Cell::Percent(p) => percent(*p, column.decimals(), locale),
        Cell::Boolean(b) => match (locale, b) {
            (Locale::PtBr, true) => "Sim".into(),
            (Locale::PtBr, false) => "Não".into(),
            (Locale::EnUs, true) => "Yes".into(),
            (Locale::EnUs, false) => "No".into(),
        },
        Cell::Date(d) => match locale {
            Locale::PtBr => d.format("%d/%m/%Y").to_string(),
            Locale::EnUs => d.format("%m/%d/%Y").to_string(),
        },
        Cell::DateTime(t) => match locale {
            Locale::PtBr => t.format("%d/%m/%Y %H:%M").to_string(),
            Locale::EnUs => t.format("%m/%d/%Y %-I:%M %p").to_string(),
        },
    }
}

fn percent(fraction: f64, decimals: usize, locale: Locale) -> String {
    let mut s = number(fraction * 100.0, decimals, locale);
    s.push('%');
    s
}

/// The text of a totals cell: counts are whole numbers, averages of integers
/// get decimals, the rest look like the column's cells.
pub(crate) fn total(total: &Total, column: &Column, locale: Locale) -> String {
    match (total.function, column.kind) {
        (TotalFn::Count, _) => number(total.value, 0, locale),
        (_, ColumnType::Percent) => percent(total.value, column.decimals(), locale),
        (TotalFn::Average, ColumnType::Integer) => number(total.value, 2, locale),
        _ => number(total.value, column.decimals(), locale),
    }
}

/// The label of the totals row.
pub(crate) fn total_label(_locale: Locale) -> &'static str {
    "Total"
}

/// The page footer: "Página 3 de 12" / "Page 3 of 12".
pub(crate) fn footer(page: usize, pages: usize, locale: Locale) -> String {
    match locale {
        Locale::PtBr => format!("Página {page} de {pages}"),
        Locale::EnUs => format!("Page {page} of {pages}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_locale() {
        assert_eq!(number(1234.5, 2, Locale::PtBr), "1.234,50");
        assert_eq!(number(1234.5, 2, Locale::EnUs), "1,234.50");
        assert_eq!(number(-1234567.0, 0, Locale::EnUs), "-1,234,567");
        assert_eq!(number(-0.001, 2, Locale::EnUs), "0.00");
        assert_eq!(number(999.0, 1, Locale::PtBr), "999,0");
    }
}
