//! Headers-exchange matching (`x-match` = all, any, all-with-x, any-with-x).

use crate::value::{FieldTable, FieldValue};

use std::collections::HashMap;

/// A message's headers prepared once per publish for matching against every binding of a
/// headers exchange: a large table is indexed once, not once per binding.
pub struct HeaderView<'a> {
    table: &'a FieldTable,
    index: Option<HashMap<&'a str, &'a FieldValue>>,
}

impl<'a> HeaderView<'a> {
    /// Prepares `table` (indexed when it is large enough for scans to cost more).
    pub fn new(table: &'a FieldTable) -> Self {
        let index = (table.0.len() > 16).then(|| table.index());
        HeaderView { table, index }
    }

    fn get(&self, key: &str) -> Option<&'a FieldValue> {
        match &self.index {
            Some(i) => i.get(key).copied(),
            None => self.table.get(key),
        }
    }
}

/// Whether message `headers` match binding `args`, as RabbitMQ's headers exchange.
pub fn headers_match(args: &FieldTable, headers: &HeaderView<'_>) -> bool {
    let mode = args
        .get("x-match")
        .and_then(FieldValue::as_str)
        .unwrap_or("all");
    let (any, with_x) = match mode {
        "any" => (true, false),
        "all-with-x" => (false, true),
        "any-with-x" => (true, true),
        _ => (false, false),
    };
    for (k, want) in args.iter() {
        if k == "x-match" || (!with_x && k.starts_with("x-")) {
            continue;
        }
        let ok = match headers.get(k) {
            None => false,
            // A void binding value matches the header's presence, whatever its value.
            Some(_) if *want == FieldValue::Void => true,
            Some(have) => have.equivalent(want),
        };
        if any && ok {
            return true;
        }
        if !any && !ok {
            return false;
        }
    }
    // `all` with every check passed (or nothing to check) matches; `any` found no match.
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_match(args: &FieldTable, h: &FieldTable) -> bool {
        super::headers_match(args, &HeaderView::new(h))
    }

    fn t(pairs: &[(&str, FieldValue)]) -> FieldTable {
        FieldTable(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn all_and_any() {
        let h = t(&[("a", FieldValue::string("1")), ("b", FieldValue::I32(2))]);
        assert!(headers_match(&t(&[("a", FieldValue::string("1"))]), &h));
        assert!(headers_match(
            &t(&[
                ("x-match", FieldValue::string("all")),
                ("a", FieldValue::string("1")),
                ("b", FieldValue::I64(2))
            ]),
            &h
        ));
        assert!(!headers_match(&t(&[("a", FieldValue::string("2"))]), &h));
        assert!(headers_match(
            &t(&[
                ("x-match", FieldValue::string("any")),
                ("a", FieldValue::string("9")),
                ("b", FieldValue::U8(2))
            ]),
            &h
        ));
        assert!(!headers_match(
            &t(&[
                ("x-match", FieldValue::string("any")),
                ("c", FieldValue::string("9"))
            ]),
            &h
        ));
        assert!(headers_match(&t(&[]), &h));
    }

    #[test]
    fn with_x_considers_x_headers() {
        let h = t(&[("x-k", FieldValue::string("v"))]);
        assert!(headers_match(
            &t(&[("x-k", FieldValue::string("nope"))]),
            &h
        ));
        assert!(!headers_match(
            &t(&[
                ("x-match", FieldValue::string("all-with-x")),
                ("x-k", FieldValue::string("nope"))
            ]),
            &h
        ));
        assert!(headers_match(
            &t(&[
                ("x-match", FieldValue::string("any-with-x")),
                ("x-k", FieldValue::string("v"))
            ]),
            &h
        ));
    }

    #[test]
    fn large_headers_match_through_the_index_with_the_first_value_of_a_repeated_key() {
        let mut pairs: Vec<(String, FieldValue)> = (0..100)
            .map(|i| (format!("h{i}"), FieldValue::I32(i)))
            .collect();
        pairs.push(("h5".into(), FieldValue::I32(-1)));
        let h = FieldTable(pairs);
        assert!(headers_match(
            &t(&[("h5", FieldValue::I32(5)), ("h99", FieldValue::I32(99))]),
            &h
        ));
        assert!(!headers_match(&t(&[("h5", FieldValue::I32(-1))]), &h));
        assert!(!headers_match(&t(&[("h100", FieldValue::Void)]), &h));
    }
}
