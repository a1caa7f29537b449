//! Output formats: aligned table, JSON, TSV; columns are dotted paths into the API's objects.

use serde_json::{Map, Value};
use std::io::{self, Write};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header line, for people.
    Table,
    /// JSON: lists as arrays, single objects as objects (all fields unless --columns).
    Json,
    /// Tab-separated values with a header line, for scripts (tabs, newlines and
    /// backslashes in values are escaped as \t, \n and \\).
    Tsv,
}

/// The value at a dotted path (`message_stats.publish`, `queue.name`).
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// A value as one cell: strings as they are, null as empty, a list of strings and numbers
/// (user tags) comma-separated, other structures as compact JSON.
pub fn cell_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.iter().all(|x| x.is_string() || x.is_number()) => a
            .iter()
            .map(|x| cell_text(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

fn escape(s: &str, backslashes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' if backslashes => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `item` cut down to `columns`, keyed by the column paths as given.
pub fn project(item: &Value, columns: &[String]) -> Value {
    let mut m = Map::new();
    for c in columns {
        m.insert(c.clone(), lookup(item, c).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// Prints the items of a list as they arrive (pages of a long list are not all held):
/// JSON and TSV stream; a table keeps only its cells to align them at the end.
pub struct ListWriter<W: Write> {
    out: W,
    format: Format,
    columns: Vec<String>,
    /// JSON without --columns prints whole objects.
    whole: bool,
    rows: Vec<Vec<String>>,
    count: usize,
}

impl<W: Write> ListWriter<W> {
    /// Starts a list with `columns`; `whole` prints whole objects in JSON.
    pub fn new(out: W, format: Format, columns: Vec<String>, whole: bool) -> io::Result<Self> {
        let mut w = ListWriter {
            out,
            format,
            columns,
            whole,
            rows: Vec::new(),
            count: 0,
        };
        match format {
            Format::Json => w.out.write_all(b"[")?,
            Format::Tsv => {
                let header: Vec<String> = w.columns.iter().map(|c| escape(c, true)).collect();
                writeln!(w.out, "{}", header.join("\t"))?;
            }
            Format::Table => {}
        }
        Ok(w)
    }

    /// Adds one item.
    pub fn push(&mut self, item: &Value) -> io::Result<()> {
        match self.format {
            Format::Json => {
                if self.count > 0 {
                    self.out.write_all(b",")?;
                }
                self.out.write_all(b"\n")?;
                let v = if self.whole {
                    item.clone()
                } else {
                    project(item, &self.columns)
                };
                serde_json::to_writer(&mut self.out, &v)?;
            }
            Format::Tsv => {
                let cells: Vec<String> = self
                    .columns
                    .iter()
                    .map(|c| escape(&cell_text(lookup(item, c)), true))
                    .collect();
                writeln!(self.out, "{}", cells.join("\t"))?;
            }
            Format::Table => {
                let cells = self
                    .columns
                    .iter()
                    .map(|c| escape(&cell_text(lookup(item, c)), false))
                    .collect();
                self.rows.push(cells);
            }
        }
        self.count += 1;
        Ok(())
    }

    /// Ends the list and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        match self.format {
            Format::Json => self
                .out
                .write_all(if self.count > 0 { b"\n]\n" } else { b"]\n" })?,
            Format::Tsv => {}
            Format::Table => write_table(&mut self.out, &self.columns, &self.rows)?,
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn write_table(out: &mut impl Write, header: &[String], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| -> io::Result<()> {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, header)?;
    for r in rows {
        line(out, r)?;
    }
    Ok(())
}

/// Prints one object: a table is one `field  value` line per column, TSV a header and one
/// row, JSON the object (whole unless `whole` is false).
pub fn write_object(
    out: &mut impl Write,
    format: Format,
    columns: &[String],
    item: &Value,
    whole: bool,
) -> io::Result<()> {
    match format {
        Format::Json => {
            let v = if whole {
                item.clone()
            } else {
                project(item, columns)
            };
            serde_json::to_writer_pretty(&mut *out, &v)?;
            out.write_all(b"\n")?;
        }
        Format::Tsv => {
            let mut w = ListWriter::new(&mut *out, format, columns.to_vec(), false)?;
            w.push(item)?;
            w.finish()?;
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = columns
                .iter()
                .map(|c| vec![c.clone(), escape(&cell_text(lookup(item, c)), false)])
                .collect();
            write_table(out, &["field".into(), "value".into()], &rows)?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(format: Format, items: &[Value], whole: bool) -> String {
        let cols = vec!["name".to_string(), "stats.n".to_string()];
        let mut w = ListWriter::new(Vec::new(), format, cols, whole).unwrap();
        for i in items {
            w.push(i).unwrap();
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    #[test]
    fn formats_agree_on_cells() {
        let items = [
            json!({"name": "a", "stats": {"n": 1}}),
            json!({"name": "long\tname", "stats": {}}),
        ];
        assert_eq!(
            list(Format::Table, &items, false),
            "name        stats.n\na           1\nlong\\tname\n"
        );
        assert_eq!(
            list(Format::Tsv, &items, false),
            "name\tstats.n\na\t1\nlong\\tname\t\n"
        );
        let j: Value = serde_json::from_str(&list(Format::Json, &items, false)).unwrap();
        assert_eq!(
            j,
            json!([{"name": "a", "stats.n": 1}, {"name": "long\tname", "stats.n": null}])
        );
        let j: Value = serde_json::from_str(&list(Format::Json, &items, true)).unwrap();
        assert_eq!(j[0], items[0]);
        assert_eq!(list(Format::Json, &[], false), "[]\n");
    }

    #[test]
    fn lists_of_scalars_are_comma_separated_cells() {
        assert_eq!(
            cell_text(Some(&json!(["management", "policymaker"]))),
            "management,policymaker"
        );
        assert_eq!(cell_text(Some(&json!([{"a": 1}]))), r#"[{"a":1}]"#);
        assert_eq!(cell_text(None), "");
    }

    #[test]
    fn single_objects_print_vertically_in_tables() {
        let mut out = Vec::new();
        let cols = vec!["a".to_string(), "b.c".to_string()];
        write_object(
            &mut out,
            Format::Table,
            &cols,
            &json!({"a": true, "b": {"c": {"d": 1}}}),
            false,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "field  value\na      true\nb.c    {\"d\":1}\n"
        );
    }
}
