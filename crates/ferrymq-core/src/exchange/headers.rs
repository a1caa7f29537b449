//! Headers-exchange matching (`x-match` = all, any, all-with-x, any-with-x).

use crate::value::{FieldTable, FieldValue};

/// Whether message `headers` match binding `args`, as RabbitMQ's headers exchange.
pub fn headers_match(args: &FieldTable, headers: &FieldTable) -> bool {
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

    // Both sides are peer-sized: with many arguments and many headers, index the headers
    // once instead of scanning them per argument.
    let index = (args.0.len() > 16 && headers.0.len() > 16).then(|| headers.index());
    let lookup = |k: &str| match &index {
        Some(i) => i.get(k).copied(),
        None => headers.get(k),
    };
    for (k, want) in args.iter() {
        if k == "x-match" || (!with_x && k.starts_with("x-")) {
            continue;
        }

        let ok = match lookup(k) {
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
}
