//! How grantctl prints: `key: value` lines for people (the default), one
//! JSON document per line for programs (`-o json`), or aligned columns for
//! long lists (`-o table`, where a command has one).
//!
//! The JSON of an answer from the cluster is its protobuf response in the
//! proto3 JSON mapping, with the field names of the protos and every field
//! present (enums by name, 64-bit integers and bytes as strings, bytes in
//! base64): the protos are its schema, and it changes only as they do,
//! compatibly. Commands that work on files print documented objects of
//! their own (docs/operations.md, "grantctl in scripts").

use serde::Serialize;

/// The `-o` choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `key: value` lines, for people.
    #[default]
    Text,
    /// One JSON document per line, for programs.
    Json,
    /// Aligned columns with a header, for long lists (list, cluster status,
    /// cluster health, audit roster); other commands print text.
    Table,
}

#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub format: Format,
}

impl Out {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Print `value` as one line of JSON, or else run `text`.
    pub fn show<T: Serialize + ?Sized>(&self, value: &T, text: impl FnOnce()) {
        if self.json() {
            println!("{}", to_json(value));
        } else {
            text()
        }
    }

    /// Print rows: as one JSON document (`value`), as a table under
    /// `header`, or line by line as `text` prints them.
    pub fn rows<T: Serialize + ?Sized>(
        &self,
        value: &T,
        header: &[&str],
        rows: &[Vec<String>],
        text: impl FnOnce(),
    ) {
        match self.format {
            Format::Json => println!("{}", to_json(value)),
            Format::Table => print!("{}", table(header, rows)),
            Format::Text => text(),
        }
    }
}

pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("a JSON value serializes")
}

/// Columns padded to their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_header(header.iter().map(|h| h.to_string()));
    for r in rows {
        t.add_row(r.clone());
    }
    let mut s = t.to_string();
    s.push('\n');
    s
}
