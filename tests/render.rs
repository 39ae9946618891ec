//! Renders documents to XLSX and PDF and reads them back with independent readers (calamine, lopdf, zip).

use std::io::Read;
use std::path::{Path, PathBuf};

use artefatos::render::{
    Format, Limits, RenderError, Summary, render, render_slice, render_to_memory, validate,
};
use calamine::{Data, Reader, Xlsx, open_workbook};
use proptest::prelude::*;
use serde_json::{Value, json};

const UNICODE: [&str; 5] = ["Açaí", "São Paulo", "Ñandú", "Ελληνικά", "Кириллица"];

fn out_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn render_value(format: Format, doc: &Value, out: &Path) -> Result<Summary, RenderError> {
    let bytes = serde_json::to_vec(doc).expect("serialize");
    render(format, bytes.as_slice(), &Limits::default(), out, None)
}

/// The issue's example, with the Unicode strings and `rows` rows.
fn sales(rows: usize, locale: &str) -> Value {
    let mut data = Vec::new();
    for i in 0..rows {
        let client = format!("{} Ltda {i}", UNICODE[i % UNICODE.len()]);
        data.push(json!([
            format!("2026-07-{:02}", i % 28 + 1),
            client,
            1234.5 + i as f64,
            3 + i as i64,
            i % 2 == 0
        ]));
    }
    json!({
        "title": "Vendas Q3",
        "locale": locale,
        "pdf": {"page_size": "A4", "orientation": "portrait"},
        "sheets": [{
            "name": "Vendas",
            "columns": [
                {"title": "Data", "type": "date"},
                {"title": "Cliente", "type": "text"},
                {"title": "Valor", "type": "number", "format": "#,##0.00"},
                {"title": "Qtd", "type": "integer"},
                {"title": "Pago", "type": "boolean"}
            ],
            "rows": data,
            "totals": {"Valor": "sum", "Qtd": "sum"}
        }]
    })
}

fn xlsx_part(path: &Path, part: &str) -> String {
    let file = std::fs::File::open(path).expect("open xlsx");
    let mut archive = zip::ZipArchive::new(file).expect("xlsx is a zip");
    let mut text = String::new();
    archive
        .by_name(part)
        .expect("part exists")
        .read_to_string(&mut text)
        .expect("utf-8 part");
    text
}

#[test]
fn xlsx_has_typed_cells_header_totals_and_frozen_pane() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_path(&dir, "vendas.xlsx");
    let summary = render_value(Format::Xlsx, &sales(10, "pt-BR"), &out).unwrap();
    assert_eq!(
        summary,
        Summary {
            sheets: 1,
            rows: 10
        }
    );

    let mut book: Xlsx<_> = open_workbook(&out).unwrap();
    assert_eq!(book.sheet_names(), vec!["Vendas".to_string()]);
    let range = book.worksheet_range("Vendas").unwrap();
    let header: Vec<String> = (0..5)
        .map(|c| range.get_value((0, c)).unwrap().to_string())
        .collect();
    assert_eq!(header, ["Data", "Cliente", "Valor", "Qtd", "Pago"]);

    match range.get_value((1, 0)).unwrap() {
        Data::DateTime(d) => {
            // 2026-07-01 is day 46204 of the 1900 date system.
            assert!(d.is_datetime());
            assert_eq!(d.as_f64(), 46204.0);
        }
        other => panic!("date cell read back as {other:?}"),
    }
    assert_eq!(
        range.get_value((1, 1)),
        Some(&Data::String("Açaí Ltda 0".into()))
    );
    assert_eq!(
        range.get_value((4, 1)),
        Some(&Data::String("Ελληνικά Ltda 3".into()))
    );
    assert_eq!(range.get_value((1, 2)), Some(&Data::Float(1234.5)));
    assert_eq!(range.get_value((1, 3)), Some(&Data::Float(3.0)));
    assert_eq!(range.get_value((1, 4)), Some(&Data::Bool(true)));
    assert_eq!(range.get_value((2, 4)), Some(&Data::Bool(false)));

    // Totals row: real formulas over the data rows, with cached results.
    let formulas = book.worksheet_formula("Vendas").unwrap();
    let formula_at =
        |row: u32, col: u32| formulas.get_value((row, col)).cloned().unwrap_or_default();
    assert_eq!(formula_at(11, 2), "SUM(C2:C11)");
    assert_eq!(formula_at(11, 3), "SUM(D2:D11)");
    let expected_sum: f64 = (0..10).map(|i| 1234.5 + i as f64).sum();
    assert_eq!(range.get_value((11, 2)), Some(&Data::Float(expected_sum)));
    assert_eq!(
        range.get_value((11, 0)),
        Some(&Data::String("Total".into()))
    );

    let sheet_xml = xlsx_part(&out, "xl/worksheets/sheet1.xml");
    assert!(
        sheet_xml.contains(
            r#"<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>"#
        ),
        "{sheet_xml:.600}"
    );
    assert!(sheet_xml.contains(r#"<autoFilter ref="A1:E11"/>"#));
    assert!(sheet_xml.contains("<cols>"), "column widths are set");
    let styles = xlsx_part(&out, "xl/styles.xml");
    assert!(styles.contains(r##"formatCode="#,##0.00""##));
    assert!(styles.contains("<b/>"), "header is bold");
    let core = xlsx_part(&out, "docProps/core.xml");
    assert!(core.contains("<dc:title>Vendas Q3</dc:title>"));
}

#[test]
fn xlsx_writes_one_worksheet_per_sheet_with_object_rows_and_nulls() {
    let doc = json!({
        "sheets": [
            {"name": "Uno", "columns": [{"title": "A", "type": "text"}], "rows": [["x"], [null]]},
            {"name": "Dos", "columns": [
                {"title": "Quando", "type": "datetime"},
                {"title": "Taxa", "type": "percent"},
                {"title": "N", "type": "integer", "width": 20}
            ], "rows": [
                {"Taxa": 0.25, "Quando": "2026-07-01T14:30:00-03:00"},
                {"N": 7}
            ], "totals": {"N": "max", "Taxa": "average", "Quando": "count"}}
        ]
    });
    let dir = tempfile::tempdir().unwrap();
    let out = out_path(&dir, "multi.xlsx");
    let summary = render_value(Format::Xlsx, &doc, &out).unwrap();
    assert_eq!(summary, Summary { sheets: 2, rows: 4 });
    let mut book: Xlsx<_> = open_workbook(&out).unwrap();
    assert_eq!(
        book.sheet_names(),
        vec!["Uno".to_string(), "Dos".to_string()]
    );
    let uno = book.worksheet_range("Uno").unwrap();
    assert_eq!(uno.get_value((1, 0)), Some(&Data::String("x".into())));
    assert!(matches!(uno.get_value((2, 0)), None | Some(Data::Empty)));
    let dos = book.worksheet_range("Dos").unwrap();
    match dos.get_value((1, 0)).unwrap() {
        Data::DateTime(d) => {
            // Wall-clock 14:30 as written, offset dropped.
            assert!((d.as_f64() - (46204.0 + 14.5 / 24.0)).abs() < 1e-9)
        }
        other => panic!("datetime read back as {other:?}"),
    }
    assert_eq!(dos.get_value((1, 1)), Some(&Data::Float(0.25)));
    assert_eq!(dos.get_value((2, 2)), Some(&Data::Float(7.0)));
    let formulas = book.worksheet_formula("Dos").unwrap();
    assert_eq!(
        formulas.get_value((3, 2)).cloned().unwrap_or_default(),
        "MAX(C2:C3)"
    );
    assert_eq!(
        formulas.get_value((3, 1)).cloned().unwrap_or_default(),
        "AVERAGE(B2:B3)"
    );
    let count = formulas.get_value((3, 0)).cloned().unwrap_or_default();
    assert_eq!(count, "COUNT(A2:A3)");
    // Cached results, for readers that do not recalculate.
    assert_eq!(dos.get_value((3, 0)), Some(&Data::Float(1.0)));
    assert_eq!(dos.get_value((3, 2)), Some(&Data::Float(7.0)));
}

fn pdf_pages_text(path: &Path) -> Vec<String> {
    let doc = lopdf::Document::load(path).expect("lopdf parses the PDF");
    doc.page_iter().map(|page| page_text(&doc, page)).collect()
}

/// The text a page shows, one line per text-showing operation, decoded
/// through each font's ToUnicode map. (lopdf 0.38's own `extract_text`
/// refuses the CMap printpdf writes, which poppler and viewers read fine.)
fn page_text(doc: &lopdf::Document, page: lopdf::ObjectId) -> String {
    use std::collections::HashMap;
    let mut maps: HashMap<Vec<u8>, HashMap<u16, String>> = HashMap::new();
    for (name, font) in doc.get_page_fonts(page).expect("page fonts") {
        let cmap_ref = font
            .get(b"ToUnicode")
            .and_then(|o| o.as_reference())
            .expect("ToUnicode");
        let stream = doc
            .get_object(cmap_ref)
            .and_then(|o| o.as_stream())
            .expect("cmap stream");
        let cmap =
            String::from_utf8(stream.decompressed_content().expect("cmap inflates")).unwrap();
        let mut map = HashMap::new();
        for line in cmap.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let [code, unicode] = parts[..]
                && code.starts_with('<')
                && unicode.starts_with('<')
                && !line.contains("0000> <FFFF")
            {
                let code = u16::from_str_radix(code.trim_matches(['<', '>']), 16).unwrap();
                let hex = unicode.trim_matches(['<', '>']);
                let units: Vec<u16> = (0..hex.len() / 4)
                    .map(|i| u16::from_str_radix(&hex[i * 4..i * 4 + 4], 16).unwrap())
                    .collect();
                map.insert(code, String::from_utf16(&units).unwrap());
            }
        }
        maps.insert(name, map);
    }
    let content = lopdf::content::Content::decode(&doc.get_page_content(page).unwrap()).unwrap();
    let mut font: Vec<u8> = Vec::new();
    let mut out = String::new();
    let show = |bytes: &[u8], font: &[u8], out: &mut String| {
        let map = &maps[font];
        for pair in bytes.chunks(2) {
            let code = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            out.push_str(map.get(&code).map_or("\u{fffd}", String::as_str));
        }
    };
    for op in content.operations {
        match op.operator.as_str() {
            "Tf" => font = op.operands[0].as_name().unwrap().to_vec(),
            "Tj" => {
                show(op.operands[0].as_str().unwrap(), &font, &mut out);
                out.push('\n');
            }
            "TJ" => {
                for item in op.operands[0].as_array().unwrap() {
                    if let Ok(bytes) = item.as_str() {
                        show(bytes, &font, &mut out);
                    }
                }
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn pdf_repeats_header_and_footer_on_every_page_with_unicode_text() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_path(&dir, "vendas.pdf");
    let summary = render_value(Format::Pdf, &sales(200, "pt-BR"), &out).unwrap();
    assert_eq!(summary.rows, 200);
    let pages = pdf_pages_text(&out);
    assert!(
        pages.len() >= 3,
        "200 rows span several pages, got {}",
        pages.len()
    );
    let n = pages.len();
    for (i, text) in pages.iter().enumerate() {
        for title in ["Data", "Cliente", "Valor", "Qtd", "Pago"] {
            assert!(
                text.contains(title),
                "page {} lacks header {title}: {text:.300}",
                i + 1
            );
        }
        let footer = format!("Página {} de {n}", i + 1);
        assert!(
            text.contains(&footer),
            "page {} lacks footer {footer}",
            i + 1
        );
    }
    let all = pages.concat();
    for word in UNICODE {
        assert!(all.contains(word), "PDF text lacks {word}");
    }
    assert!(pages[0].contains("Vendas Q3"), "title on the first page");
    // pt-BR numbers and dates.
    assert!(all.contains("1.234,50"), "pt-BR number");
    assert!(all.contains("01/07/2026"), "pt-BR date");
    let total: f64 = (0..200).map(|i| 1234.5 + i as f64).sum();
    assert!(pages[n - 1].contains("Total"));
    assert!(pages[n - 1].contains("266.800,00"), "sum {total} in pt-BR");
}

/// More pages than one printpdf batch (100 pages): the file is assembled
/// from several batches and must still read as one numbered document.
#[test]
fn pdf_spanning_several_batches_numbers_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_path(&dir, "long.pdf");
    render_value(Format::Pdf, &sales(7_000, "en-US"), &out).unwrap();
    let pages = pdf_pages_text(&out);
    let n = pages.len();
    assert!(
        n > 100,
        "7,000 rows should need more than one batch, got {n} pages"
    );
    for (i, text) in pages.iter().enumerate() {
        assert!(
            text.contains(&format!("Page {} of {n}", i + 1)),
            "footer of page {}",
            i + 1
        );
        assert!(text.contains("Cliente"), "header on page {}", i + 1);
    }
    assert!(pages[0].contains("Vendas Q3"));
    assert!(
        pages[n - 1].contains("Ltda 6999"),
        "the last row is on the last page"
    );
}

#[test]
fn pdf_formats_numbers_and_dates_for_en_us_on_letter_landscape() {
    let mut doc = sales(3, "en-US");
    doc["pdf"] = json!({"page_size": "Letter", "orientation": "landscape"});
    let dir = tempfile::tempdir().unwrap();
    let out = out_path(&dir, "sales.pdf");
    render_value(Format::Pdf, &doc, &out).unwrap();
    let pages = pdf_pages_text(&out);
    assert_eq!(pages.len(), 1);
    assert!(pages[0].contains("1,234.50"));
    assert!(pages[0].contains("07/01/2026"));
    assert!(pages[0].contains("Page 1 of 1"));
    let pdf = lopdf::Document::load(&out).unwrap();
    let page_id = pdf.page_iter().next().unwrap();
    let media = pdf
        .get_dictionary(page_id)
        .unwrap()
        .get(b"MediaBox")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_float().unwrap())
        .collect::<Vec<_>>();
    assert!(
        (media[2] - 792.0).abs() < 1.0 && (media[3] - 612.0).abs() < 1.0,
        "{media:?}"
    );
}

#[test]
fn pdf_subsets_the_font_so_a_one_page_file_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_path(&dir, "small.pdf");
    render_value(Format::Pdf, &sales(5, "pt-BR"), &out).unwrap();
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(
        size < 100_000,
        "one-page PDF is {size} bytes; the whole font is 757 KB"
    );
}

#[test]
fn pdf_wraps_long_text_and_ellipsizes_past_the_line_limit() {
    let long = "palavra ".repeat(400);
    let doc = json!({"sheets": [{"name": "S", "columns": [
        {"title": "Texto", "type": "text"}, {"title": "N", "type": "number"}
    ], "rows": [[long, 1.0], ["curto", 2.0]]}]});
    let dir = tempfile::tempdir().unwrap();
    let out = out_path(&dir, "wrap.pdf");
    render_value(Format::Pdf, &doc, &out).unwrap();
    let text = pdf_pages_text(&out).concat();
    assert!(text.contains('…'), "cut text ends with an ellipsis");
    assert!(text.contains("curto"));
    let shown = text.matches("palavra").count();
    assert!(
        shown > 3 && shown < 400,
        "wrapped to a few lines, shows {shown} words"
    );
}

#[test]
fn render_refuses_invalid_documents_permanently() {
    let dir = tempfile::tempdir().unwrap();
    for format in Format::ALL {
        let out = out_path(&dir, format.as_str());
        let err = render(
            format,
            &b"{\"sheets\": 3}"[..],
            &Limits::default(),
            &out,
            None,
        )
        .unwrap_err();
        assert!(err.is_permanent());
        match err {
            RenderError::Invalid(e) => assert_eq!(e.path, "document"),
            other => panic!("expected Invalid, got {other}"),
        }
    }
}

#[test]
fn render_reports_io_errors_as_retryable() {
    let out = Path::new("/nonexistent-dir/out.xlsx");
    let err = render_value(Format::Xlsx, &sales(1, "en-US"), out).unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    let err = render_value(Format::Pdf, &sales(1, "en-US"), out).unwrap_err();
    assert!(!err.is_permanent(), "{err}");
}

/// A payload whose reading fails half-way is an I/O problem, worth a retry,
/// not an invalid document.
#[test]
fn render_reports_a_failing_input_stream_as_retryable() {
    struct Broken(Vec<u8>);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("connection reset"));
            }
            let n = buf.len().min(self.0.len()).min(64);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }
    let mut bytes = serde_json::to_vec(&sales(20, "pt-BR")).unwrap();
    bytes.truncate(bytes.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    for format in Format::ALL {
        let out = out_path(&dir, format.as_str());
        let err = render(
            format,
            Broken(bytes.clone()),
            &Limits::default(),
            &out,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::Io(_)), "{format}: {err}");
        assert!(!err.is_permanent());
    }
}

#[test]
fn pdf_gives_each_sheet_its_own_titled_section() {
    let col = json!([{"title": "Produto", "type": "text"}, {"title": "Preço", "type": "number"}]);
    let doc = json!({"locale": "pt-BR", "sheets": [
        {"name": "Frutas", "columns": col, "rows": [["Açaí", 12.5], ["Caju", 3]]},
        {"name": "Legumes", "columns": col, "rows": [["Chuchu", 1]], "totals": {"Preço": "sum"}}
    ]});
    let dir = tempfile::tempdir().unwrap();
    let out = out_path(&dir, "sections.pdf");
    let summary = render_value(Format::Pdf, &doc, &out).unwrap();
    assert_eq!(summary, Summary { sheets: 2, rows: 3 });
    let pages = pdf_pages_text(&out);
    assert_eq!(pages.len(), 2, "each sheet starts a page");
    assert!(pages[0].contains("Frutas") && pages[0].contains("Açaí") && pages[0].contains("12,50"));
    assert!(!pages[0].contains("Legumes"));
    assert!(
        pages[1].contains("Legumes") && pages[1].contains("Chuchu") && pages[1].contains("Preço")
    );
    assert!(pages[1].contains("Página 2 de 2"));
}

/// Every validation error, with its exact message.
#[test]
fn validation_errors_name_the_place_and_the_reason() {
    let col = |t: &str, ty: &str| json!({"title": t, "type": ty});
    let sheet = |cols: Value, rows: Value| json!({"sheets": [{"name": "S", "columns": cols, "rows": rows}]});
    let long_text = "x".repeat(32_768);
    let emoji = |n: usize| "😀".repeat(n);
    let mut many_cols = Vec::new();
    for i in 0..257 {
        many_cols.push(col(&format!("c{i}"), "text"));
    }
    let cases: Vec<(Value, &str)> = vec![
        (
            json!([]),
            "document: invalid type: sequence, expected a document object at line 1 column 0",
        ),
        (json!({}), "sheets: missing field"),
        (
            json!({"sheets": []}),
            "sheets: a document needs at least one sheet",
        ),
        (
            json!({"colour": 1, "sheets": []}),
            "colour: unknown field, expected one of title, locale, pdf, sheets",
        ),
        (
            json!({"locale": "fr-FR", "sheets": []}),
            "locale: unsupported locale \"fr-FR\", expected one of pt-BR, en-US",
        ),
        (
            json!({"pdf": {"page_size": "A3"}, "sheets": []}),
            "pdf: unknown variant `A3`, expected `A4` or `Letter` at line 1 column 24",
        ),
        (
            sheet(json!([col("Valor", "number")]), json!([[1], [2], ["abc"]])),
            "sheets[0].rows[2][0]: expected number, got \"abc\"",
        ),
        (
            sheet(
                json!([col("A", "text"), col("B", "number"), col("C", "integer")]),
                json!([["a", 1, 2], ["b", 1, 2.5]]),
            ),
            "sheets[0].rows[1][2]: expected integer, got 2.5",
        ),
        (
            sheet(json!([col("A", "text")]), json!([[5]])),
            "sheets[0].rows[0][0]: expected text, got 5",
        ),
        (
            sheet(json!([col("A", "boolean")]), json!([["yes"]])),
            "sheets[0].rows[0][0]: expected boolean, got \"yes\"",
        ),
        (
            sheet(json!([col("A", "date")]), json!([["2026-13-01"]])),
            "sheets[0].rows[0][0]: expected date (YYYY-MM-DD), got \"2026-13-01\"",
        ),
        (
            sheet(json!([col("A", "date")]), json!([["1899-12-31"]])),
            "sheets[0].rows[0][0]: date 1899-12-31 is outside 1900-01-01..9999-12-31, the dates a spreadsheet stores",
        ),
        (
            sheet(json!([col("A", "datetime")]), json!([["2026-07-01 10:00"]])),
            "sheets[0].rows[0][0]: expected datetime (RFC 3339), got \"2026-07-01 10:00\"",
        ),
        (
            sheet(json!([col("A", "percent")]), json!([[[1]]])),
            "sheets[0].rows[0][0]: expected percent (a number, 0.25 = 25%), got an array",
        ),
        (
            sheet(json!([col("A", "integer")]), json!([[9007199254740993u64]])),
            "sheets[0].rows[0][0]: integer 9007199254740993 is larger than 2^53, the largest a spreadsheet stores exactly",
        ),
        (
            sheet(json!([col("A", "text"), col("B", "text")]), json!([["a"]])),
            "sheets[0].rows[0]: expected 2 cells, got 1",
        ),
        (
            sheet(json!([col("A", "text")]), json!([["a", "b", "c"]])),
            "sheets[0].rows[0]: expected 1 cells, got 3",
        ),
        (
            sheet(json!([col("A", "text")]), json!([{"B": "x"}])),
            "sheets[0].rows[0]: unknown column \"B\"",
        ),
        (
            sheet(json!([col("Valor", "number")]), json!([{"Valor": "x"}])),
            "sheets[0].rows[0][\"Valor\"]: expected number, got \"x\"",
        ),
        (
            sheet(json!([col("A", "text")]), json!([7])),
            "sheets[0].rows[0]: expected a row (array or object), got 7",
        ),
        (
            sheet(json!([col("A", "text")]), json!([[long_text]])),
            "sheets[0].rows[0][0]: text is 32768 UTF-16 units, over the limit of 32767 (max_cell_chars; Excel counts an emoji as 2)",
        ),
        // Excel counts UTF-16 units: an emoji is 2.
        (
            json!({"sheets": [{"name": emoji(16), "columns": [col("A", "text")]}]}),
            "sheets[0].name: sheet name \"😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀\" is 32 UTF-16 units, Excel allows at most 31 (it counts an emoji as 2)",
        ),
        (
            sheet(json!([col("A", "text")]), json!([[emoji(20_000)]])),
            "sheets[0].rows[0][0]: text is 40000 UTF-16 units, over the limit of 32767 (max_cell_chars; Excel counts an emoji as 2)",
        ),
        (
            sheet(json!([col(&emoji(16_384), "text")]), json!([])),
            "sheets[0].columns[0].title: column title is 32768 UTF-16 units, over the limit of 32767 (max_cell_chars; Excel counts an emoji as 2)",
        ),
        (
            json!({"title": emoji(16_384), "sheets": [{"columns": [col("A", "text")]}]}),
            "title: title is 32768 UTF-16 units, over the limit of 32767 (max_cell_chars; Excel counts an emoji as 2)",
        ),
        (
            sheet(
                json!([{"title": "A", "type": "number", "format": format!("0{}", emoji(128))}]),
                json!([]),
            ),
            "sheets[0].columns[0].format: format is 257 UTF-16 units, Excel allows at most 255",
        ),
        (
            sheet(
                json!([{"title": "A", "type": "number", "format": " "}]),
                json!([]),
            ),
            "sheets[0].columns[0].format: format is empty, expected an Excel number format such as #,##0.00",
        ),
        // A format may not print hundreds of decimals (a PDF cell of 1e308).
        (
            sheet(
                json!([{"title": "A", "type": "number", "format": format!("0.{}", "0".repeat(31))}]),
                json!([]),
            ),
            "sheets[0].columns[0].format: format \"0.0000000000000000000000000000000\" asks for 31 decimal places, Excel allows at most 30",
        ),
        (
            sheet(
                json!([{"title": "A", "type": "number", "format": format!("0;0.{}", "#".repeat(200))}]),
                json!([]),
            ),
            "sheets[0].columns[0].format: format \"0;0.####################################…\" asks for 200 decimal places, Excel allows at most 30",
        ),
        // Widths are checked as the f32 the PDF uses: 1e-300 would be 0.
        (
            sheet(
                json!([{"title": "A", "type": "text", "width": 1e-300}]),
                json!([]),
            ),
            "sheets[0].columns[0].width: width 1e-300 is out of range, expected more than 0 and at most 255 characters",
        ),
        (
            sheet(
                json!([{"title": "A", "type": "text", "width": 255.5}]),
                json!([]),
            ),
            "sheets[0].columns[0].width: width 255.5 is out of range, expected more than 0 and at most 255 characters",
        ),
        (
            sheet(json!([]), json!([])),
            "sheets[0].columns: a sheet needs at least one column",
        ),
        (
            sheet(Value::Array(many_cols), json!([])),
            "sheets[0].columns: 257 columns, over the limit of 256 (max_columns)",
        ),
        (
            sheet(json!([col("A", "text"), col("A", "number")]), json!([])),
            "sheets[0].columns[1].title: duplicate column title \"A\" (rows may be keyed by title)",
        ),
        (
            sheet(json!([col("A", "money")]), json!([])),
            "sheets[0].columns[0].type: unknown column type \"money\", expected one of text, number, integer, date, datetime, boolean, percent",
        ),
        (
            sheet(json!([{"title": "A"}]), json!([])),
            "sheets[0].columns[0]: missing field `type` at line 1 column 36",
        ),
        (
            json!({"sheets": [{"name": "Nome muito comprido para o Excel aceitar", "columns": [col("A", "text")]}]}),
            "sheets[0].name: sheet name \"Nome muito comprido para o Excel aceitar\" is 40 UTF-16 units, Excel allows at most 31 (it counts an emoji as 2)",
        ),
        (
            json!({"sheets": [{"name": "a/b", "columns": [col("A", "text")]}]}),
            "sheets[0].name: sheet name \"a/b\" contains '/', which Excel does not allow (any of []:*?/\\)",
        ),
        (
            json!({"sheets": [{"name": "Vendas", "columns": [col("A", "text")]}, {"name": "VENDAS", "columns": [col("A", "text")]}]}),
            "sheets[1].name: sheet name \"VENDAS\" is already used by another sheet (Excel compares names case-insensitively)",
        ),
        (
            json!({"sheets": [{"columns": [col("A", "text")], "totals": {"B": "sum"}}]}),
            "sheets[0].totals[\"B\"]: unknown column",
        ),
        (
            json!({"sheets": [{"columns": [col("A", "number")], "totals": {"A": "median"}}]}),
            "sheets[0].totals[\"A\"]: unknown function \"median\", expected one of sum, average, min, max, count",
        ),
        (
            json!({"sheets": [{"columns": [col("A", "text")], "totals": {"A": "sum"}}]}),
            "sheets[0].totals[\"A\"]: sum needs a number, integer or percent column, this one is text",
        ),
        (
            json!({"sheets": [{"columns": [col("A", "text")], "colour": 1}]}),
            "sheets[0].colour: unknown field, expected one of name, columns, rows, totals",
        ),
        (
            json!({"sheets": [{"name": "S"}]}),
            "sheets[0]: missing field \"columns\"",
        ),
    ];
    for (doc, expected) in cases {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let err = validate(&bytes, &Limits::default()).expect_err(expected);
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn validation_enforces_configured_limits() {
    let limits = Limits {
        max_sheets: 2,
        max_rows: 3,
        max_columns: 2,
        max_cell_chars: 5,
    };
    let col = |t: &str| json!({"title": t, "type": "text"});
    let cases = [
        (
            json!({"sheets": [{"columns": [col("A")]}, {"columns": [col("A")]}, {"columns": [col("A")]}]}),
            "sheets[2]: more than 2 sheets, over the limit of 2 (max_sheets)",
        ),
        (
            json!({"sheets": [{"columns": [col("A")], "rows": [["a"], ["b"], ["c"], ["d"]]}]}),
            "sheets[0].rows[3]: more than 3 rows in a sheet, over the limit of 3 (max_rows)",
        ),
        (
            json!({"sheets": [{"columns": [col("A"), col("B"), col("C")]}]}),
            "sheets[0].columns: 3 columns, over the limit of 2 (max_columns)",
        ),
        (
            json!({"sheets": [{"columns": [col("A")], "rows": [["abcdef"]]}]}),
            "sheets[0].rows[0][0]: text is 6 UTF-16 units, over the limit of 5 (max_cell_chars; Excel counts an emoji as 2)",
        ),
    ];
    for (doc, expected) in cases {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let err = validate(&bytes, &limits).expect_err(expected);
        assert_eq!(err.to_string(), expected);
    }
    // A configured limit above Excel's cannot let through what a worksheet
    // cannot hold.
    let generous = Limits {
        max_cell_chars: 1_000_000,
        ..Limits::default()
    };
    let doc = json!({"sheets": [{"columns": [col("A")], "rows": [["x".repeat(32_768)]]}]});
    let err = validate(&serde_json::to_vec(&doc).unwrap(), &generous).unwrap_err();
    assert_eq!(
        err.to_string(),
        "sheets[0].rows[0][0]: text is 32768 UTF-16 units, over the limit of 32767 (the most an Excel cell holds; Excel counts an emoji as 2)"
    );
    // Within the limits the same shapes pass.
    let ok = json!({"sheets": [{"columns": [col("A"), col("B")], "rows": [["abcde", null]]}]});
    let summary = validate(&serde_json::to_vec(&ok).unwrap(), &limits).unwrap();
    assert_eq!(summary, Summary { sheets: 1, rows: 1 });
}

#[test]
fn validation_reports_syntax_errors_with_the_row() {
    let doc = br#"{"sheets":[{"columns":[{"title":"A","type":"number"}],"rows":[[1],[2],[3,]]}]}"#;
    let err = validate(doc, &Limits::default()).unwrap_err();
    assert_eq!(err.path, "sheets[0].rows[2]");
    assert!(err.message.contains("line 1"), "{err}");
}

/// The in-memory path writes the same files as the streaming one.
#[test]
fn render_slice_writes_what_render_writes() {
    let bytes = serde_json::to_vec(&sales(300, "pt-BR")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for format in Format::ALL {
        let streamed = out_path(&dir, &format!("streamed.{format}"));
        let sliced = out_path(&dir, &format!("sliced.{format}"));
        let a = render(
            format,
            bytes.as_slice(),
            &Limits::default(),
            &streamed,
            None,
        )
        .unwrap();
        let b = render_slice(format, &bytes, &Limits::default(), &sliced, None).unwrap();
        assert_eq!(a, b);
        if format == Format::Pdf {
            assert_eq!(pdf_pages_text(&streamed), pdf_pages_text(&sliced));
        } else {
            let sheet = "xl/worksheets/sheet1.xml";
            assert_eq!(xlsx_part(&streamed, sheet), xlsx_part(&sliced, sheet));
        }
    }
    let err = render_slice(
        Format::Pdf,
        b"{\"sheets\": []}",
        &Limits::default(),
        &dir.path().join("x"),
        None,
    )
    .unwrap_err();
    assert!(err.is_permanent(), "{err}");
}

/// A small document rendered in memory (worksheets kept in memory, no
/// temporary file) reads back like the same document rendered to a file.
#[test]
fn render_to_memory_reads_back_like_a_file() {
    let bytes = serde_json::to_vec(&sales(40, "pt-BR")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for format in Format::ALL {
        let file = out_path(&dir, &format!("file.{format}"));
        let memory = out_path(&dir, &format!("memory.{format}"));
        let a = render_slice(format, &bytes, &Limits::default(), &file, None).unwrap();
        let (b, buffer) = render_to_memory(format, &bytes, &Limits::default(), None).unwrap();
        assert_eq!(a, b);
        std::fs::write(&memory, &buffer).unwrap();
        if format == Format::Pdf {
            assert!(buffer.starts_with(b"%PDF-"));
            assert_eq!(pdf_pages_text(&file), pdf_pages_text(&memory));
        } else {
            let read = |path: &Path| -> Vec<Vec<Data>> {
                let mut book: Xlsx<_> = open_workbook(path).unwrap();
                let range = book.worksheet_range("Vendas").unwrap();
                range.rows().map(|r| r.to_vec()).collect()
            };
            let rows = read(&memory);
            assert_eq!(rows.len(), 42, "header, 40 rows, totals");
            assert_eq!(rows, read(&file));
        }
    }
    let err =
        render_to_memory(Format::Xlsx, b"{\"sheets\": 3}", &Limits::default(), None).unwrap_err();
    assert!(err.is_permanent(), "{err}");
}

#[test]
fn validate_and_render_agree_on_the_summary() {
    let doc = sales(25, "en-US");
    let bytes = serde_json::to_vec(&doc).unwrap();
    let summary = validate(&bytes, &Limits::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for format in Format::ALL {
        let rendered = render_value(format, &doc, &out_path(&dir, format.as_str())).unwrap();
        assert_eq!(rendered, summary);
    }
}

/// Any cell value allowed for a column type, including nulls and awkward text.
fn cell_for(kind: &'static str) -> BoxedStrategy<Value> {
    let value = match kind {
        "text" => any::<String>().prop_map(Value::from).boxed(),
        "number" => (-1e12f64..1e12).prop_map(Value::from).boxed(),
        "integer" => (-9_007_199_254_740_992i64..9_007_199_254_740_992)
            .prop_map(Value::from)
            .boxed(),
        "percent" => (-10.0f64..10.0).prop_map(Value::from).boxed(),
        "boolean" => any::<bool>().prop_map(Value::from).boxed(),
        "date" => (1900i32..9999, 1u32..13, 1u32..29)
            .prop_map(|(y, m, d)| Value::from(format!("{y:04}-{m:02}-{d:02}")))
            .boxed(),
        _ => (1900i32..9999, 0u32..24, -12i32..13)
            .prop_map(|(y, h, tz)| {
                Value::from(format!(
                    "{y:04}-03-04T{h:02}:05:06{}{:02}:00",
                    if tz < 0 { '-' } else { '+' },
                    tz.abs()
                ))
            })
            .boxed(),
    };
    prop_oneof![1 => Just(Value::Null), 6 => value].boxed()
}

const KINDS: [&str; 7] = [
    "text", "number", "integer", "percent", "boolean", "date", "datetime",
];

fn document() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(0usize..KINDS.len(), 1..6),
        0usize..40,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(|(kinds, rows, pt, landscape)| {
            let row = kinds
                .iter()
                .map(|k| cell_for(KINDS[*k]))
                .collect::<Vec<_>>();
            (
                Just(kinds),
                proptest::collection::vec(row, rows),
                Just(pt),
                Just(landscape),
            )
        })
        .prop_map(|(kinds, rows, pt, landscape)| {
            let columns: Vec<Value> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| json!({"title": format!("Col {i} ç"), "type": KINDS[*k]}))
                .collect();
            let totals: serde_json::Map<String, Value> = kinds
                .iter()
                .enumerate()
                .filter(|(_, k)| matches!(KINDS[**k], "number" | "integer" | "percent"))
                .map(|(i, _)| (format!("Col {i} ç"), Value::from("sum")))
                .collect();
            json!({
                "title": "Propriedade",
                "locale": if pt { "pt-BR" } else { "en-US" },
                "pdf": {"orientation": if landscape { "landscape" } else { "portrait" }},
                "sheets": [{"name": "Dados", "columns": columns, "rows": rows, "totals": totals}]
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_document_renders_in_both_formats(doc in document()) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let summary = validate(&bytes, &Limits::default()).expect("generated documents are valid");
        let dir = tempfile::tempdir().unwrap();
        for format in Format::ALL {
            let out = dir.path().join(format.as_str());
            let rendered = render(format, bytes.as_slice(), &Limits::default(), &out, None).unwrap();
            prop_assert_eq!(&rendered, &summary);
            prop_assert!(std::fs::metadata(&out).unwrap().len() > 0);
        }
    }
}

/// Everything a reader sees in a rendered file: every XLSX sheet's name,
/// cells and formulas; every PDF page's text and size.
fn read_back(format: Format, path: &Path) -> String {
    match format {
        Format::Xlsx => {
            let mut book: Xlsx<_> = open_workbook(path).unwrap();
            let mut out = String::new();
            for name in book.sheet_names() {
                let cells = book.worksheet_range(&name).unwrap();
                let formulas = book.worksheet_formula(&name).unwrap();
                out.push_str(&format!("{name}: {cells:?} {formulas:?}\n"));
            }
            out
        }
        Format::Pdf => {
            let pdf = lopdf::Document::load(path).unwrap();
            let sizes: Vec<String> = pdf
                .page_iter()
                .map(|p| format!("{:?}", pdf.get_dictionary(p).unwrap().get(b"MediaBox")))
                .collect();
            format!("{sizes:?}\n{}", pdf_pages_text(path).join("\n---\n"))
        }
    }
}

/// All orders of `items`.
fn permutations(items: &[&'static str]) -> Vec<Vec<&'static str>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for (i, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first);
            all.push(tail);
        }
    }
    all
}

/// A JSON object written with its keys in `order` (serde_json's maps sort).
fn object_in_order(fields: &[(&str, String)], order: &[&str]) -> String {
    let parts: Vec<String> = order
        .iter()
        .map(|key| {
            let (_, value) = fields.iter().find(|(k, _)| k == key).unwrap();
            format!("{}: {value}", serde_json::to_string(key).unwrap())
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

#[test]
fn any_key_order_validates_and_renders_the_same() {
    let sheet_fields = |name: &str| {
        vec![
            ("name", serde_json::to_string(name).unwrap()),
            (
                "columns",
                json!([
                    {"title": "Cliente", "type": "text"},
                    {"title": "Valor", "type": "number", "format": "#,##0.00"}
                ])
                .to_string(),
            ),
            (
                "rows",
                json!([["Açaí", 1234.5], ["Ñandú", null], ["São Paulo", -7]]).to_string(),
            ),
            ("totals", json!({"Valor": "sum"}).to_string()),
        ]
    };
    const SHEET_KEYS: [&str; 4] = ["name", "columns", "rows", "totals"];
    const DOC_KEYS: [&str; 4] = ["title", "locale", "pdf", "sheets"];
    let document = |doc_order: &[&str], first: &[&str], second: &[&str]| {
        let sheets = format!(
            "[{}, {}]",
            object_in_order(&sheet_fields("Vendas"), first),
            object_in_order(&sheet_fields("Mais"), second)
        );
        let fields = vec![
            ("title", "\"Ordem\"".to_string()),
            ("locale", "\"pt-BR\"".to_string()),
            (
                "pdf",
                json!({"page_size": "Letter", "orientation": "landscape"}).to_string(),
            ),
            ("sheets", sheets),
        ];
        object_in_order(&fields, doc_order)
    };
    let dir = tempfile::tempdir().unwrap();
    let reference = document(&DOC_KEYS, &SHEET_KEYS, &SHEET_KEYS);
    let expected: Vec<String> = Format::ALL
        .iter()
        .map(|&format| {
            let out = dir.path().join(format!("reference.{format}"));
            render_slice(format, reference.as_bytes(), &Limits::default(), &out, None).unwrap();
            read_back(format, &out)
        })
        .collect();
    assert!(
        expected[1].contains("1.227,50"),
        "pt-BR total: {}",
        expected[1]
    );
    assert!(
        expected[1].contains("792"),
        "Letter landscape: {}",
        expected[1]
    );
    let sheet_orders = permutations(&SHEET_KEYS);
    let mut documents: Vec<String> = permutations(&DOC_KEYS)
        .iter()
        .map(|order| document(order, &SHEET_KEYS, &SHEET_KEYS))
        .collect();
    for (i, order) in sheet_orders.iter().enumerate() {
        // The second sheet in another order than the first.
        let other = &sheet_orders[sheet_orders.len() - 1 - i];
        documents.push(document(
            &["sheets", "pdf", "locale", "title"],
            order,
            other,
        ));
    }
    for (i, doc) in documents.iter().enumerate() {
        let summary =
            validate(doc.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert_eq!(summary, Summary { sheets: 2, rows: 6 }, "{doc}");
        for (f, &format) in Format::ALL.iter().enumerate() {
            let out = dir.path().join(format!("{i}.{format}"));
            let via_slice = render_slice(format, doc.as_bytes(), &Limits::default(), &out, None)
                .unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(via_slice, summary);
            assert_eq!(read_back(format, &out), expected[f], "{format} of {doc}");
        }
    }
    // The streaming and in-memory entry points agree on the most shuffled one.
    let shuffled = document(
        &["sheets", "pdf", "locale", "title"],
        &["totals", "rows", "columns", "name"],
        &["rows", "name", "totals", "columns"],
    );
    for (f, &format) in Format::ALL.iter().enumerate() {
        let out = dir.path().join(format!("streamed.{format}"));
        render(format, shuffled.as_bytes(), &Limits::default(), &out, None).unwrap();
        assert_eq!(read_back(format, &out), expected[f]);
        let (_, bytes) =
            render_to_memory(format, shuffled.as_bytes(), &Limits::default(), None).unwrap();
        let out = dir.path().join(format!("memory.{format}"));
        std::fs::write(&out, bytes).unwrap();
        assert_eq!(read_back(format, &out), expected[f]);
    }
    // Errors in a part read by the first pass still name their place.
    let bad = r#"{"sheets": [{"rows": [[1]], "columns": [{"title": "A", "type": "money"}]}]}"#;
    assert_eq!(
        validate(bad.as_bytes(), &Limits::default())
            .unwrap_err()
            .to_string(),
        "sheets[0].columns[0].type: unknown column type \"money\", expected one of text, number, integer, date, datetime, boolean, percent"
    );
    let bad = r#"{"sheets": [{"rows": [["x"]], "columns": [{"title": "A", "type": "number"}]}]}"#;
    assert_eq!(
        validate(bad.as_bytes(), &Limits::default())
            .unwrap_err()
            .to_string(),
        "sheets[0].rows[0][0]: expected number, got \"x\""
    );
    let bad = r#"{"sheets": [{"rows": [], "name": "S"}]}"#;
    assert_eq!(
        validate(bad.as_bytes(), &Limits::default())
            .unwrap_err()
            .to_string(),
        "sheets[0]: missing field \"columns\""
    );
    let bad = r#"{"sheets": [{"columns": [{"title": "A", "type": "text"}]}], "locale": "fr-FR"}"#;
    for format in Format::ALL {
        let err = render_slice(
            format,
            bad.as_bytes(),
            &Limits::default(),
            &dir.path().join("bad"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid document: locale: unsupported locale \"fr-FR\", expected one of pt-BR, en-US"
        );
    }
}

#[test]
fn texts_at_excels_utf16_limits_render() {
    // 15 emoji and a letter: 31 UTF-16 units; 16,383 emoji: 32,766 units.
    let name = format!("{}x", "😀".repeat(15));
    let cell = "😀".repeat(16_383);
    let doc = json!({"sheets": [{
        "name": name,
        "columns": [{"title": "😀".repeat(100), "type": "text", "format": format!("@{}", "😀".repeat(127))}],
        "rows": [[cell]]
    }]});
    let bytes = serde_json::to_vec(&doc).unwrap();
    validate(&bytes, &Limits::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for format in Format::ALL {
        let out = dir.path().join(format.as_str());
        render_slice(format, &bytes, &Limits::default(), &out, None).unwrap();
    }
    let mut book: Xlsx<_> = open_workbook(dir.path().join("xlsx")).unwrap();
    assert_eq!(book.sheet_names(), vec![name.clone()]);
    let range = book.worksheet_range(&name).unwrap();
    assert_eq!(range.get_value((1, 0)), Some(&Data::String(cell)));
}

#[test]
fn pathological_cells_render_without_quadratic_fitting() {
    // Each of these cells used to be measured again after every character:
    // 32,767 zero-width combining marks never fill a line, and a 30-decimal
    // format on 1e308 prints about 450 characters into a narrow column.
    let marks = "\u{301}".repeat(32_767);
    let word = "W".repeat(32_767);
    let rows: Vec<Value> = (0..20)
        .map(|i| {
            json!([
                marks,
                word,
                if i % 2 == 0 { 1e308 } else { -f64::MAX },
                1e308
            ])
        })
        .collect();
    let decimals = format!("#,##0.{}", "0".repeat(30));
    let doc = json!({"sheets": [{
        "columns": [
            {"title": "Marks", "type": "text", "width": 1},
            {"title": "Word", "type": "text", "width": 1},
            {"title": "Big", "type": "number", "format": decimals, "width": 1},
            {"title": "Pct", "type": "percent", "format": format!("0.{}%", "0".repeat(30)), "width": 255}
        ],
        "rows": rows,
        "totals": {"Big": "max", "Pct": "sum"}
    }]});
    let bytes = serde_json::to_vec(&doc).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for format in Format::ALL {
        let out = dir.path().join(format.as_str());
        let summary = render_slice(format, &bytes, &Limits::default(), &out, None).unwrap();
        assert_eq!(summary.rows, 20);
    }
    let text = pdf_pages_text(&dir.path().join("pdf")).join("\n");
    assert!(text.contains('…'), "long cells are cut with an ellipsis");
}

#[test]
fn tiny_column_widths_give_a_readable_pdf() {
    // 1e-30 survives the f32 conversion; all columns that narrow still share
    // the page (no NaN positions), and 1e-300 is refused by validation.
    let doc = json!({"sheets": [{
        "columns": [
            {"title": "A", "type": "text", "width": 1e-30},
            {"title": "B", "type": "number", "width": 1e-30}
        ],
        "rows": [["abc", 1.5]]
    }]});
    let dir = tempfile::tempdir().unwrap();
    for format in Format::ALL {
        let out = dir.path().join(format.as_str());
        render_value(format, &doc, &out).unwrap();
    }
    let pages = pdf_pages_text(&dir.path().join("pdf"));
    assert!(pages[0].contains("abc"), "{}", pages[0]);
    let pdf = std::fs::read(dir.path().join("pdf")).unwrap();
    assert!(!String::from_utf8_lossy(&pdf).contains("NaN"));
}

#[test]
fn a_render_past_its_deadline_fails_permanently() {
    let bytes = serde_json::to_vec(&sales(600, "pt-BR")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let expired = Some(std::time::Duration::ZERO);
    for format in Format::ALL {
        let out = dir.path().join(format.as_str());
        let errors = [
            render_slice(format, &bytes, &Limits::default(), &out, expired).unwrap_err(),
            render(format, bytes.as_slice(), &Limits::default(), &out, expired).unwrap_err(),
            render_to_memory(format, &bytes, &Limits::default(), expired).unwrap_err(),
        ];
        for err in errors {
            assert!(matches!(err, RenderError::TimedOut { .. }), "{err}");
            assert!(err.is_permanent());
            assert_eq!(err.to_string(), "render exceeded 0 s");
        }
        // A generous deadline changes nothing.
        let generous = Some(std::time::Duration::from_secs(3600));
        let summary = render_slice(format, &bytes, &Limits::default(), &out, generous).unwrap();
        assert_eq!(summary.rows, 600);
    }
}

/// Text from every plane: ASCII, accents, CJK, combining marks, emoji
/// (astral: 2 UTF-16 units), controls, and the characters sheet names forbid.
fn unicode_char() -> BoxedStrategy<char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        2 => proptest::sample::select(vec!['ç', 'ã', 'Ñ', 'ß', '漢', '\u{301}', '\u{200b}', ' ', '\n', '\t', '\'', '/', '[', '*', '…']),
        3 => proptest::char::range('\u{1f600}', '\u{1f64f}'),
        1 => proptest::char::range('\u{10000}', '\u{10ffff}'),
        1 => any::<char>(),
    ]
    .boxed()
}

/// A string of `min..max` characters; near Excel's limits when they are astral.
fn unicode_string(min: usize, max: usize) -> BoxedStrategy<String> {
    proptest::collection::vec(unicode_char(), min..max)
        .prop_map(|cs| cs.into_iter().collect())
        .boxed()
}

/// Any JSON number, extremes included (JSON has no NaN or infinity).
fn any_number() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => (-1e6f64..1e6).prop_map(Value::from),
        1 => proptest::sample::select(vec![
            f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, 1e308, -1e308, -0.0, 0.0, 9_007_199_254_740_993.0,
        ]).prop_map(Value::from),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
    ]
    .boxed()
}

/// A cell of the column's type, rarely of another: a mismatch makes the
/// document invalid, which the property allows, but most stay valid.
fn hostile_cell(kind: &'static str) -> BoxedStrategy<Value> {
    let own = if kind == "text" {
        prop_oneof![
            12 => unicode_string(0, 40).prop_map(Value::from),
            // Around 32,767 UTF-16 units: 16,383 or 16,384 emoji, or letters.
            1 => (16_380usize..16_385).prop_map(|n| Value::from("😀".repeat(n))),
            1 => (32_760usize..32_769).prop_map(|n| Value::from("x".repeat(n))),
        ]
        .boxed()
    } else if matches!(kind, "number" | "percent") {
        prop_oneof![1 => cell_for(kind), 1 => any_number()].boxed()
    } else {
        cell_for(kind)
    };
    prop_oneof![200 => own, 1 => any_number()].boxed()
}

fn hostile_format() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        6 => Just(None),
        2 => proptest::sample::select(vec!["#,##0.00", "0.000%", "@", "yyyy-mm-dd hh:mm", "0;(0)", "General"])
            .prop_map(|f| Some(f.to_string())),
        2 => (0usize..32).prop_map(|n| Some(format!("#,##0.{}", "0".repeat(n)))),
        // 255 UTF-16 units at most: "0" and 127 emoji.
        1 => (124usize..129).prop_map(|n| Some(format!("0{}", "😀".repeat(n)))),
        1 => unicode_string(1, 12).prop_map(|f| Some(format!("0{f}"))),
    ]
    .boxed()
}

fn hostile_width() -> BoxedStrategy<Option<f64>> {
    prop_oneof![
        6 => Just(None),
        3 => proptest::sample::select(vec![1e-30, 1e-6, 0.5, 10.0, 255.0]).prop_map(Some),
        3 => (0.01f64..255.0).prop_map(Some),
        1 => proptest::sample::select(vec![1e-300, 1e-46, 255.1, 1e300, 0.0, -1.0]).prop_map(Some),
    ]
    .boxed()
}

/// A sheet name near Excel's 31 UTF-16 units, rarely with a forbidden character.
fn hostile_sheet_name() -> BoxedStrategy<String> {
    let safe = prop_oneof![
        3 => proptest::char::range('a', 'z'),
        1 => proptest::sample::select(vec!['ç', 'Ñ', '漢', '\u{301}', ' ', '-']),
        2 => proptest::char::range('\u{1f600}', '\u{1f64f}'),
    ];
    prop_oneof![
        12 => proptest::collection::vec(safe, 8..20).prop_map(|cs| cs.into_iter().collect()),
        1 => unicode_string(1, 20),
    ]
    .boxed()
}

/// One sheet as JSON text, keys in a random order.
fn hostile_sheet() -> BoxedStrategy<String> {
    (
        proptest::collection::vec(
            (
                0usize..KINDS.len(),
                hostile_format(),
                hostile_width(),
                unicode_string(1, 12),
            ),
            1..6,
        ),
        prop_oneof![1 => Just(None), 3 => hostile_sheet_name().prop_map(Some)],
        0usize..12,
        proptest::collection::vec(
            proptest::option::of(proptest::sample::select(vec![
                "sum", "average", "min", "max", "count",
            ])),
            5,
        ),
        Just(["name", "columns", "rows", "totals"]).prop_shuffle(),
    )
        .prop_flat_map(|(columns, name, rows, functions, order)| {
            let row = columns
                .iter()
                .map(|(k, ..)| hostile_cell(KINDS[*k]))
                .collect::<Vec<_>>();
            (
                Just((columns, name, functions, order)),
                proptest::collection::vec(row, rows),
            )
        })
        .prop_map(|((columns, name, functions, order), rows)| {
            let cols: Vec<Value> = columns
                .iter()
                .enumerate()
                .map(|(i, (k, format, width, title))| {
                    let mut c = json!({"title": format!("{title}{i}"), "type": KINDS[*k]});
                    if let Some(f) = format {
                        c["format"] = json!(f);
                    }
                    if let Some(w) = width {
                        c["width"] = json!(w);
                    }
                    c
                })
                .collect();
            // Totals on some columns: any function on numbers, a count on
            // the rest (and rarely, through the last column, anything).
            let totals: serde_json::Map<String, Value> = functions
                .iter()
                .zip(columns.iter().zip(&cols))
                .enumerate()
                .filter_map(|(i, (f, ((k, ..), c)))| {
                    let numeric = matches!(KINDS[*k], "number" | "integer" | "percent");
                    let f = match f {
                        Some(f) if numeric || i == 4 => *f,
                        Some(_) => "count",
                        None => return None,
                    };
                    Some((c["title"].as_str().unwrap().to_string(), json!(f)))
                })
                .collect();
            let mut fields = vec![
                ("columns", Value::Array(cols).to_string()),
                ("rows", serde_json::to_string(&rows).unwrap()),
                ("totals", Value::Object(totals).to_string()),
            ];
            let mut order: Vec<&str> = order.to_vec();
            match name {
                Some(n) => fields.push(("name", serde_json::to_string(&n).unwrap())),
                None => order.retain(|k| *k != "name"),
            }
            object_in_order(&fields, &order)
        })
        .boxed()
}

/// A whole document as JSON text: several sheets, settings and title in any order.
fn hostile_document() -> BoxedStrategy<String> {
    (
        proptest::collection::vec(hostile_sheet(), 1..4),
        any::<bool>(),
        any::<bool>(),
        unicode_string(0, 30),
        Just(["title", "locale", "pdf", "sheets"]).prop_shuffle(),
    )
        .prop_map(|(sheets, pt, landscape, title, order)| {
            let fields = vec![
                ("title", serde_json::to_string(&title).unwrap()),
                (
                    "locale",
                    json!(if pt { "pt-BR" } else { "en-US" }).to_string(),
                ),
                (
                    "pdf",
                    json!({"orientation": if landscape { "landscape" } else { "portrait" }})
                        .to_string(),
                ),
                ("sheets", format!("[{}]", sheets.join(", "))),
            ];
            object_in_order(&fields, &order)
        })
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// "A document that validates renders": whatever the validator accepts
    /// renders in both formats with the same summary, and whatever it
    /// refuses, rendering refuses with the same error, never a panic.
    #[test]
    fn whatever_validates_renders_and_whatever_is_refused_fails_alike(doc in hostile_document()) {
        let dir = tempfile::tempdir().unwrap();
        let verdict = validate(doc.as_bytes(), &Limits::default());
        for format in Format::ALL {
            let out = dir.path().join(format.as_str());
            let rendered = render_slice(format, doc.as_bytes(), &Limits::default(), &out, None);
            match (&verdict, rendered) {
                (Ok(summary), Ok(rendered)) => prop_assert_eq!(summary, &rendered),
                (Ok(_), Err(e)) => prop_assert!(false, "{} refused a valid document: {}\n{}", format, e, doc),
                (Err(v), Err(RenderError::Invalid(e))) => prop_assert_eq!(v, &e),
                (Err(v), other) => prop_assert!(false, "{}: validation said {} but render gave {:?}", format, v, other.map(|_| ())),
            }
        }
    }
}
