//! Error texts that RabbitMQ builds with Erlang's `~p`, reproduced byte for byte so clients
//! (and their tests) see the same reply texts from both brokers.

use ferrymq_core::message::ExpirationError;

/// Erlang's `~p` breaks a term that would run past this column.
const LINE_FIT: usize = 78;

/// An Erlang term as `~p` prints it, before it is placed on a line.
enum Term {
    /// Printed as is (a quoted string, a number).
    Text(String),
    /// A list of integers, each already printed.
    Integers(Vec<String>),
}

/// `~p` of a byte list: a quoted string when every byte is printable in Latin-1, otherwise
/// a list of integers.
fn erlang_string(bytes: &[u8]) -> Term {
    let printable = |b: u8| matches!(b, 32..=126 | 160..=255 | 8..=13 | 27);
    if bytes.is_empty() || !bytes.iter().all(|&b| printable(b)) {
        return Term::Integers(bytes.iter().map(u8::to_string).collect());
    }
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'"');
    for &b in bytes {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            11 => b"\\v",
            8 => b"\\b",
            12 => b"\\f",
            27 => b"\\e",
            _ => std::slice::from_ref(&b),
        };
        out.extend_from_slice(escaped);
    }
    out.push(b'"');
    // Latin-1 bytes above 127 are passed through as RabbitMQ passes them.
    Term::Text(String::from_utf8_lossy(&out).into_owned())
}

impl Term {
    fn flat(&self) -> String {
        match self {
            Term::Text(q) => q.clone(),
            Term::Integers(items) => format!("[{}]", items.join(",")),
        }
    }

    /// The term printed from column `col`: a list too long for the line is filled line by
    /// line, continuation lines one column right of its `[`.
    fn at(&self, col: usize) -> String {
        let flat = self.flat();
        let Term::Integers(items) = self else {
            return flat;
        };
        if col + flat.len() <= LINE_FIT {
            return flat;
        }
        let mut out = String::from("[");
        let mut line_start = col;
        let mut line_len = 1;
        let mut on_line = 0;
        for (i, item) in items.iter().enumerate() {
            let piece = format!("{item}{}", if i + 1 == items.len() { "]" } else { "," });
            if on_line > 0 && line_start + line_len + piece.len() > LINE_FIT {
                out.push('\n');
                out.push_str(&" ".repeat(col + 1));
                line_start = col + 1;
                line_len = 0;
                on_line = 0;
            }
            line_len += piece.len();
            on_line += 1;
            out.push_str(&piece);
        }
        out
    }
}

/// `~p` of `{Tag,Value}` printed from column `col`: on one line if it fits, else with the
/// value on the next line under the tag.
fn tuple(tag: &str, value: &Term, col: usize) -> String {
    let flat = format!("{{{tag},{}}}", value.flat());
    if col + flat.len() <= LINE_FIT {
        flat
    } else {
        format!("{{{tag},\n{}{}}}", " ".repeat(col + 1), value.at(col + 1))
    }
}

/// RabbitMQ's text for a refused `expiration` property (without the reply-code prefix).
pub fn invalid_expiration(raw: &[u8], e: &ExpirationError) -> String {
    let head = format!("invalid expiration '{}': ", String::from_utf8_lossy(raw));
    // Erlang counts the property's bytes, not its UTF-8 characters.
    let col = "invalid expiration '".len() + raw.len() + "': ".len();
    let reason = match e {
        ExpirationError::NoInteger => "no_integer".to_string(),
        ExpirationError::Leftover(rest) => tuple("leftover_string", &erlang_string(rest), col),
        ExpirationError::Negative(n) => tuple("value_negative", &Term::Text(format!("-{n}")), col),
        ExpirationError::TooLarge(n) => tuple("value_too_large", &Term::Text(n.to_string()), col),
    };
    head + &reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_core::message::parse_expiration;

    fn text(raw: &str) -> String {
        let e = parse_expiration(raw.as_bytes()).unwrap_err();
        invalid_expiration(raw.as_bytes(), &e)
    }

    #[test]
    fn texts_match_rabbitmq_3_10() {
        // Recorded from RabbitMQ 3.10 (pika's reply_text after "PRECONDITION_FAILED - ").
        let cases = [
            ("abc", "invalid expiration 'abc': no_integer".to_string()),
            ("5 ", "invalid expiration '5 ': {leftover_string,\" \"}".to_string()),
            ("5\x01a", "invalid expiration '5\x01a': {leftover_string,[1,97]}".to_string()),
            ("5\x7f", "invalid expiration '5\x7f': {leftover_string,[127]}".to_string()),
            ("5\n", "invalid expiration '5\n': {leftover_string,\"\\n\"}".to_string()),
            ("5\"q", "invalid expiration '5\"q': {leftover_string,\"\\\"q\"}".to_string()),
            (
                "-999999999999999999",
                "invalid expiration '-999999999999999999': {value_negative,-999999999999999999}"
                    .to_string(),
            ),
            (
                "1000000000000000000",
                format!(
                    "invalid expiration '1000000000000000000': {{value_too_large,\n{}1000000000000000000}}",
                    " ".repeat(43)
                ),
            ),
            (
                "5xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                format!(
                    "invalid expiration '5xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx': {{leftover_string,\n{}\"{}\"}}",
                    " ".repeat(55),
                    "x".repeat(30)
                ),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(text(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn long_integer_lists_fill_lines_as_rabbitmq_3_10() {
        // The tuple breaks, then the list fits on its own line.
        let raw = format!("12345678901234567890{}", "\x01".repeat(10));
        let want = format!(
            "invalid expiration '{raw}': {{leftover_string,\n{}[1,1,1,1,1,1,1,1,1,1]}}",
            " ".repeat(54)
        );
        assert_eq!(text(&raw), want);
        // A list too long for its line is filled up to column 78, then continues one
        // column right of its `[` (RabbitMQ's text, before its 255-byte cut).
        let raw = format!("5{}", "a\x01".repeat(20));
        let got = text(&raw);
        let want = format!(
            "invalid expiration '{raw}': {{leftover_string,\n{}[97,1,97,1,\n{}97,1,",
            " ".repeat(65),
            " ".repeat(66)
        );
        assert!(got.starts_with(&want), "{got:?}");
    }
}
