//! Topic matching exactly as RabbitMQ: words split on `.`, `*` matches one word, `#` matches
//! zero or more, and an empty key has zero words.

/// Splits a routing key into words; the empty key has no words.
pub fn split_key(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Word {
    Lit(String),
    Star,
    Hash,
}

/// A binding key compiled for matching.
#[derive(Debug, Clone)]
pub struct TopicPattern {
    words: Vec<Word>,
}

impl TopicPattern {
    /// Compiles a binding key.
    pub fn new(pattern: &str) -> Self {
        let mut words = Vec::new();
        for w in split_key(pattern) {
            let word = match w {
                "*" => Word::Star,
                "#" => Word::Hash,
                other => Word::Lit(other.to_string()),
            };
            // Consecutive `#` words match the same as one.
            if word == Word::Hash && words.last() == Some(&Word::Hash) {
                continue;
            }
            words.push(word);
        }
        TopicPattern { words }
    }

    /// Whether a routing key, already split into words, matches.
    pub fn matches_words(&self, key: &[&str]) -> bool {
        // Iterative wildcard matching with backtracking to the last `#`: linear in practice.
        let p = &self.words;
        let (mut pi, mut ki) = (0usize, 0usize);
        let mut backtrack: Option<(usize, usize)> = None;
        loop {
            if pi < p.len() {
                match &p[pi] {
                    Word::Hash => {
                        backtrack = Some((pi, ki));
                        pi += 1;
                        continue;
                    }
                    Word::Star if ki < key.len() => {
                        pi += 1;
                        ki += 1;
                        continue;
                    }
                    Word::Lit(l) if ki < key.len() && l == key[ki] => {
                        pi += 1;
                        ki += 1;
                        continue;
                    }
                    _ => {}
                }
            } else if ki == key.len() {
                return true;
            }
            // Mismatch: let the last `#` swallow one more word, if it can.
            match backtrack {
                Some((bp, bk)) if bk < key.len() => {
                    backtrack = Some((bp, bk + 1));
                    pi = bp + 1;
                    ki = bk + 1;
                }
                _ => return false,
            }
        }
    }
}

/// Whether `routing_key` matches binding key `pattern`.
pub fn topic_match(pattern: &str, routing_key: &str) -> bool {
    TopicPattern::new(pattern).matches_words(&split_key(routing_key))
}

#[cfg(test)]
mod tests {
    use super::topic_match;

    #[test]
    fn rabbitmq_topic_semantics() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.b.b.c", true),
            ("#", "", true),
            ("#", "a.b", true),
            ("*", "", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("", "", true),
            ("", "a", false),
            ("a.*", "a.", true),
            ("a.*.b", "a..b", true),
            ("#.b", "b", true),
            ("#.b", "a.b.b", true),
            ("*.#", "", false),
            ("#.#", "a", true),
            ("a.#.#.b", "a.b", true),
            ("#.*.#", "a", true),
            ("a.#.b.*", "a.x.b.y.b.z", true),
            ("a.#.b.*", "a.x.b.y.c", false),
            ("*.orange.*", "quick.orange.rabbit", true),
            ("*.*.rabbit", "quick.orange.rabbit", true),
            ("lazy.#", "lazy.orange.male.rabbit", true),
            ("*.orange.*", "quick.orange.male.rabbit", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(topic_match(p, k), want, "pattern {p:?} key {k:?}");
        }
    }
}
