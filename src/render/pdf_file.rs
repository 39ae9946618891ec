//! Streams printpdf's page batches into one PDF file, so memory holds one batch of pages, never the document.
//!
//! Each batch is a complete printpdf document (its own font subset); its
//! objects are renumbered after the previous batch's, its pages re-parented
//! under one page tree, and written out at once. The page tree, catalog,
//! info dictionary and cross-reference table come last.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use printpdf_lopdf::{Dictionary, Document, Object, ObjectId};

use super::RenderError;

const CATALOG: u32 = 1;
const PAGES: u32 = 2;

/// Where the PDF's bytes go: a file for big documents, memory for small ones
/// (no temporary file, uploaded straight from the buffer).
pub(crate) enum PdfOut {
    File(BufWriter<File>),
    Memory(Vec<u8>),
}

impl Write for PdfOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            PdfOut::File(file) => file.write(buf),
            PdfOut::Memory(bytes) => bytes.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            PdfOut::File(file) => file.flush(),
            PdfOut::Memory(_) => Ok(()),
        }
    }
}

/// A PDF file being written batch by batch.
pub(crate) struct PdfFile {
    out: PdfOut,
    written: u64,
    /// Byte offset of each object, by id (index 0 unused).
    offsets: Vec<Option<u64>>,
    next_id: u32,
    kids: Vec<Object>,
}

impl PdfFile {
    /// A PDF written to the file at `path`.
    pub fn create(path: &Path) -> Result<PdfFile, RenderError> {
        PdfFile::start(PdfOut::File(BufWriter::with_capacity(
            1 << 16,
            File::create(path)?,
        )))
    }

    /// A PDF kept in memory; [`finish`](Self::finish) hands back its bytes.
    pub fn in_memory() -> Result<PdfFile, RenderError> {
        PdfFile::start(PdfOut::Memory(Vec::new()))
    }

    fn start(out: PdfOut) -> Result<PdfFile, RenderError> {
        let mut file = PdfFile {
            out,
            written: 0,
            offsets: vec![None; 3],
            next_id: PAGES + 1,
            kids: Vec::new(),
        };
        file.put(b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n")?;
        Ok(file)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), RenderError> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn object(&mut self, id: u32, object: &Object) -> Result<(), RenderError> {
        let index = id as usize;
        if self.offsets.len() <= index {
            self.offsets.resize(index + 1, None);
        }
        self.offsets[index] = Some(self.written);
        let mut bytes = format!("{id} 0 obj\n").into_bytes();
        serialize(object, &mut bytes);
        bytes.extend_from_slice(b"\nendobj\n");
        self.put(&bytes)
    }

    /// Writes every page of `batch` (a document printpdf built) after the
    /// pages written so far.
    pub fn append(&mut self, mut batch: Document) -> Result<(), RenderError> {
        batch.renumber_objects_with(self.next_id);
        let root = reference(batch.trailer.get(b"Root").ok());
        let info = reference(batch.trailer.get(b"Info").ok());
        let tree = root
            .and_then(|id| batch.get_dictionary(id).ok())
            .and_then(|catalog| reference(catalog.get(b"Pages").ok()));
        let pages: Vec<ObjectId> = batch.page_iter().collect();
        for (id, object) in &mut batch.objects {
            if Some(*id) == root || Some(*id) == tree || Some(*id) == info {
                continue;
            }
            if pages.contains(id)
                && let Object::Dictionary(page) = object
            {
                page.set("Parent", Object::Reference((PAGES, 0)));
            }
            self.object(id.0, object)?;
        }
        self.kids.extend(pages.into_iter().map(Object::Reference));
        self.next_id = batch.max_id + 1;
        Ok(())
    }

    /// Writes the page tree, catalog, info and cross-reference table; returns
    /// where the bytes went.
    pub fn finish(mut self, title: &str) -> Result<PdfOut, RenderError> {
        let count = self.kids.len() as i64;
        let mut tree = Dictionary::new();
        tree.set("Type", Object::Name(b"Pages".to_vec()));
        tree.set("Count", Object::Integer(count));
        tree.set("Kids", Object::Array(std::mem::take(&mut self.kids)));
        self.object(PAGES, &Object::Dictionary(tree))?;
        let mut catalog = Dictionary::new();
        catalog.set("Type", Object::Name(b"Catalog".to_vec()));
        catalog.set("Pages", Object::Reference((PAGES, 0)));
        self.object(CATALOG, &Object::Dictionary(catalog))?;
        let info_id = self.next_id;
        let mut info = Dictionary::new();
        info.set(
            "Title",
            Object::String(utf16be(title), printpdf_lopdf::StringFormat::Hexadecimal),
        );
        info.set(
            "Producer",
            Object::String(b"artefatos".to_vec(), printpdf_lopdf::StringFormat::Literal),
        );
        self.object(info_id, &Object::Dictionary(info))?;

        let size = self.offsets.len();
        let xref_at = self.written;
        let mut xref = format!("xref\n0 {size}\n0000000000 65535 f \n");
        for offset in &self.offsets[1..] {
            match offset {
                Some(at) => xref.push_str(&format!("{at:010} 00000 n \n")),
                None => xref.push_str("0000000000 00000 f \n"),
            }
        }
        xref.push_str(&format!(
            "trailer\n<< /Size {size} /Root {CATALOG} 0 R /Info {info_id} 0 R >>\nstartxref\n{xref_at}\n%%EOF\n"
        ));
        self.put(xref.as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn reference(object: Option<&Object>) -> Option<ObjectId> {
    match object {
        Some(Object::Reference(id)) => Some(*id),
        _ => None,
    }
}

/// A PDF text string: UTF-16BE with a byte-order mark, so any title shows.
fn utf16be(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFE, 0xFF];
    for unit in text.encode_utf16() {
        bytes.extend_from_slice(&unit.to_be_bytes());
    }
    bytes
}

/// Writes `object` in PDF syntax.
fn serialize(object: &Object, out: &mut Vec<u8>) {
    match object {
        Object::Null => out.extend_from_slice(b"null"),
        Object::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Object::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Object::Real(r) => {
            let r = if r.is_finite() { *r } else { 0.0 };
            out.extend_from_slice(format!("{r}").as_bytes())
        }
        Object::Name(name) => {
            out.push(b'/');
            for &b in name {
                if b.is_ascii_graphic() && !b"#()<>[]{}/%".contains(&b) {
                    out.push(b);
                } else {
                    out.extend_from_slice(format!("#{b:02X}").as_bytes());
                }
            }
        }
        Object::String(bytes, _) => {
            out.push(b'<');
            for b in bytes {
                out.extend_from_slice(format!("{b:02X}").as_bytes());
            }
            out.push(b'>');
        }
        Object::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                serialize(item, out);
            }
            out.push(b']');
        }
        Object::Dictionary(dict) => serialize_dict(dict, out),
        Object::Stream(stream) => {
            let mut dict = stream.dict.clone();
            dict.set("Length", Object::Integer(stream.content.len() as i64));
            serialize_dict(&dict, out);
            out.extend_from_slice(b"\nstream\n");
            out.extend_from_slice(&stream.content);
            out.extend_from_slice(b"\nendstream");
        }
        Object::Reference((id, generation)) => {
            out.extend_from_slice(format!("{id} {generation} R").as_bytes())
        }
    }
}

fn serialize_dict(dict: &Dictionary, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<<");
    for (key, value) in dict.iter() {
        serialize(&Object::Name(key.clone()), out);
        out.push(b' ');
        serialize(value, out);
        out.push(b' ');
    }
    out.extend_from_slice(b">>");
}
