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

/// Topic bindings indexed by word, so routing cost follows the key's words rather than the
/// number of bindings.
pub struct TopicTrie<T> {
    root: Node<T>,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

struct Node<T> {
    words: std::collections::HashMap<String, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            words: Default::default(),
            star: None,
            hash: None,
            values: Vec::new(),
        }
    }
}

impl<T: Clone> TopicTrie<T> {
    /// Adds `value` under binding key `pattern`.
    pub fn insert(&mut self, pattern: &str, value: T) {
        let mut node = &mut self.root;
        for w in TopicPattern::new(pattern).words {
            node = match w {
                Word::Lit(l) => node.words.entry(l).or_default(),
                Word::Star => node.star.get_or_insert_with(Default::default),
                Word::Hash => node.hash.get_or_insert_with(Default::default),
            };
        }
        node.values.push(value);
    }

    /// Appends the values of every pattern matching `words` to `out` (a value bound by two
    /// matching patterns appears twice; callers deduplicate destinations).
    pub fn matches(&self, words: &[&str], out: &mut Vec<T>) {
        walk(&self.root, words, out);
    }
}

fn walk<T: Clone>(node: &Node<T>, words: &[&str], out: &mut Vec<T>) {
    if let Some(h) = &node.hash {
        // `#` swallows zero or more words.
        for skip in 0..=words.len() {
            walk(h, &words[skip..], out);
        }
    }
    match words.split_first() {
        None => out.extend(node.values.iter().cloned()),
        Some((first, rest)) => {
            if let Some(n) = node.words.get(*first) {
                walk(n, rest, out);
            }
            if let Some(n) = &node.star {
                walk(n, rest, out);
            }
        }
    }
}

#[cfg(test)]
mod trie_tests {
    use super::*;

    #[test]
    fn trie_agrees_with_the_pattern_matcher() {
        let patterns = [
            "a.b.c", "a.*.c", "a.#.c", "#", "*", "", "a.*", "a.#", "#.b", "*.#", "#.#", "a.#.#.b",
            "#.*.#", "a.#.b.*", "*.*", "#.a.#", "a.*.#", "x", "a..b", "*.a.*",
        ];
        let keys = [
            "",
            "a",
            "b",
            "a.b",
            "a.b.c",
            "a.c",
            "a.b.b.c",
            "a.",
            ".a",
            "a..b",
            "a.x.b.y.b.z",
            "a.x.b.y.c",
            "x",
            "a.a",
            "b.a.b",
            "a.b.b",
            "q.a.q",
        ];
        let mut trie = TopicTrie::default();
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(p, i);
        }
        for k in keys {
            let mut got = Vec::new();
            trie.matches(&split_key(k), &mut got);
            got.sort_unstable();
            got.dedup();
            let want: Vec<usize> = (0..patterns.len())
                .filter(|&i| topic_match(patterns[i], k))
                .collect();
            assert_eq!(got, want, "key {k:?}");
        }
    }
}
