//! The embedded DejaVu Sans font and its glyph widths, so PDF layout measures text exactly as it is drawn.

use super::RenderError;

/// DejaVu Sans (free licence, see assets/fonts/DejaVuSans-LICENSE.txt),
/// compiled in so the binary needs no font on disk. printpdf embeds only the
/// glyphs a document uses.
pub(crate) static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Characters below this code point get their width from a table instead of
/// a font lookup: Latin, Greek and Cyrillic, the bulk of real data.
const TABLE_SIZE: usize = 0x500;

/// Advance widths of the embedded font, in font units.
pub(crate) struct Metrics {
    face: ttf_parser::Face<'static>,
    table: Vec<u16>,
    units_per_em: f32,
}

impl Metrics {
    pub fn load() -> Result<Metrics, RenderError> {
        let face = ttf_parser::Face::parse(DEJAVU_SANS, 0)
            .map_err(|e| RenderError::Pdf(format!("embedded font does not parse: {e}")))?;
        let units_per_em = f32::from(face.units_per_em());
        let mut metrics = Metrics {
            face,
            table: Vec::new(),
            units_per_em,
        };
        metrics.table = (0..TABLE_SIZE as u32)
            .map(|cp| char::from_u32(cp).map_or(0, |c| metrics.lookup(c)))
            .collect();
        Ok(metrics)
    }

    /// The advance of `c`; characters the font lacks are drawn as glyph 0
    /// (.notdef), so they are measured as glyph 0 too.
    fn lookup(&self, c: char) -> u16 {
        let glyph = self.face.glyph_index(c).unwrap_or(ttf_parser::GlyphId(0));
        self.face.glyph_hor_advance(glyph).unwrap_or(0)
    }

    /// Width of `text` in points at font size `size`.
    pub fn width(&self, text: &str, size: f32) -> f32 {
        self.points(text.chars().map(|c| self.units(c)).sum(), size)
    }

    /// The advance of `c` in font units. Widths add up (no kerning), so
    /// callers fitting text keep running sums instead of measuring again.
    pub fn units(&self, c: char) -> u32 {
        let cp = c as usize;
        u32::from(if cp < TABLE_SIZE {
            self.table[cp]
        } else {
            self.lookup(c)
        })
    }

    /// Font units at `size`, in points.
    pub fn points(&self, units: u32, size: f32) -> f32 {
        units as f32 * size / self.units_per_em
    }
}
