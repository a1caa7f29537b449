//! Error texts that RabbitMQ builds with Erlang's `~p`, reproduced byte for byte so clients
//! (and their tests) see the same reply texts from both brokers.

use ferrymq_core::message::ExpirationError;

/// Erlang's `~p` breaks a term that would run past this column.
const LINE_FIT: usize = 78;

/// `~p` of a byte list: a quoted string when every byte is printable in Latin-1, otherwise
/// a list of integers.
fn erlang_string(bytes: &[u8]) -> String {
    let printable = |b: u8| matches!(b, 32..=126 | 160..=255 | 8..=13 | 27);
    if bytes.is_empty() || !bytes.iter().all(|&b| printable(b)) {
        let items: Vec<String> = bytes.iter().map(u8::to_string).collect();
        return format!("[{}]", items.join(","));
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
    String::from_utf8_lossy(&out).into_owned()
}

/// `~p` of `{Tag,Value}` printed from column `col`: on one line if it fits, else with the
/// value on the next line under the tag.
fn tuple(tag: &str, value: &str, col: usize) -> String {
    let flat = format!("{{{tag},{value}}}");
    if col + flat.len() <= LINE_FIT {
        flat
    } else {
        format!("{{{tag},\n{}{value}}}", " ".repeat(col + 1))
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
        ExpirationError::Negative(n) => tuple("value_negative", &format!("-{n}"), col),
        ExpirationError::TooLarge(n) => tuple("value_too_large", n, col),
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
}
