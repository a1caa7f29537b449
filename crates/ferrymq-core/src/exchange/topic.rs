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
    has_hash: bool,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            has_hash: false,
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

impl<T> Node<T> {
    fn child(&self, w: &Word) -> Option<&Node<T>> {
        match w {
            Word::Lit(l) => self.words.get(l),
            Word::Star => self.star.as_deref(),
            Word::Hash => self.hash.as_deref(),
        }
    }

    fn child_mut(&mut self, w: &Word) -> Option<&mut Node<T>> {
        match w {
            Word::Lit(l) => self.words.get_mut(l),
            Word::Star => self.star.as_deref_mut(),
            Word::Hash => self.hash.as_deref_mut(),
        }
    }

    fn child_count(&self) -> usize {
        self.words.len() + usize::from(self.star.is_some()) + usize::from(self.hash.is_some())
    }

    fn has_children(&self) -> bool {
        self.child_count() > 0
    }

    fn cut(&mut self, w: &Word) {
        match w {
            Word::Lit(l) => {
                self.words.remove(l);
            }
            Word::Star => self.star = None,
            Word::Hash => self.hash = None,
        }
    }
}

/// A step of the match: a trie node and how many words of the key are consumed. A node
/// reached through a `#` edge may also swallow the next word and stay where it is.
type State<'a, T> = (&'a Node<T>, usize, bool);

impl<T: Clone> TopicTrie<T> {
    /// Adds `value` under binding key `pattern`; returns its index among that pattern's
    /// values (for [`Self::remove_at`]).
    pub fn insert(&mut self, pattern: &str, value: T) -> usize {
        let mut node = &mut self.root;
        for w in TopicPattern::new(pattern).words {
            node = match w {
                Word::Lit(l) => node.words.entry(l).or_default(),
                Word::Star => node.star.get_or_insert_with(Default::default),
                Word::Hash => {
                    self.has_hash = true;
                    node.hash.get_or_insert_with(Default::default)
                }
            };
        }
        node.values.push(value);
        node.values.len() - 1
    }

    /// Removes one value under binding key `pattern` that `is` picks (a scan of that
    /// pattern's values). Returns whether a value went.
    pub fn remove(&mut self, pattern: &str, is: impl Fn(&T) -> bool) -> bool {
        let words = TopicPattern::new(pattern).words;
        let Some(i) = self.node(&words).and_then(|n| n.values.iter().position(is)) else {
            return false;
        };
        self.take(&words, i).is_some()
    }

    /// Removes the value at `index` among `pattern`'s values (as [`Self::insert`] numbered
    /// it), moving the last of them into its place. Returns `None` if there was none there,
    /// else the value now at `index`, whose index changed. Nodes nothing needs any more are
    /// pruned, so churn does not grow the trie.
    pub fn remove_at(&mut self, pattern: &str, index: usize) -> Option<Option<T>> {
        let words = TopicPattern::new(pattern).words;
        self.take(&words, index)
    }

    fn node(&self, words: &[Word]) -> Option<&Node<T>> {
        let mut node = &self.root;
        for w in words {
            node = node.child(w)?;
        }
        Some(node)
    }

    /// Walks the pattern's words without recursion: keys can be long.
    fn take(&mut self, words: &[Word], index: usize) -> Option<Option<T>> {
        let mut node = &mut self.root;
        for w in words {
            node = node.child_mut(w)?;
        }
        if index >= node.values.len() {
            return None;
        }
        node.values.swap_remove(index);
        let moved = node.values.get(index).cloned();
        if node.values.is_empty() && !node.has_children() {
            self.prune(words);
        }
        Some(moved)
    }

    /// Cuts the path of `words` below the deepest node on it that stays (the root, or one
    /// with values or other branches); the path's last node is empty.
    fn prune(&mut self, words: &[Word]) {
        let mut keep = 0;
        let mut n = &self.root;
        for (depth, w) in words.iter().enumerate() {
            if depth == 0 || !n.values.is_empty() || n.child_count() > 1 {
                keep = depth;
            }
            match n.child(w) {
                Some(c) => n = c,
                None => return,
            }
        }
        let mut n = &mut self.root;
        for w in &words[..keep] {
            match n.child_mut(w) {
                Some(c) => n = c,
                None => return,
            }
        }
        if let Some(w) = words.get(keep) {
            n.cut(w);
        }
    }

    /// Appends the values of every pattern matching `words` to `out` (a value bound by two
    /// matching patterns appears twice; callers deduplicate destinations).
    ///
    /// Runs as an automaton over (node, words consumed) states, each expanded at most once:
    /// with several `#` in the bindings one state is reachable along many paths, and a walk
    /// per path would take time exponential in the key's length. The cost is bounded by trie
    /// size × (words + 1), whatever the bindings.
    pub fn matches(&self, words: &[&str], out: &mut Vec<T>) {
        self.matches_with(words, |v| out.push(v.clone()));
    }

    /// Calls `found` with the value of every pattern matching `words` (see [`Self::matches`]).
    pub fn matches_with(&self, words: &[&str], mut found: impl FnMut(&T)) {
        let mut stack: Vec<State<'_, T>> = vec![(&self.root, 0, false)];
        // Without `#` every node sits at one depth, so no state can be reached twice.
        let mut seen = self
            .has_hash
            .then(std::collections::HashSet::<(*const Node<T>, usize)>::new);
        while let Some((node, i, in_hash)) = stack.pop() {
            if let Some(seen) = &mut seen {
                if !seen.insert((node as *const Node<T>, i)) {
                    continue;
                }
            }
            if let Some(h) = &node.hash {
                // `#` matches zero words here, or more as its state swallows them.
                stack.push((h, i, true));
            }
            match words.get(i) {
                None => node.values.iter().for_each(&mut found),
                Some(w) => {
                    if in_hash {
                        stack.push((node, i + 1, true));
                    }
                    if let Some(n) = node.words.get(*w) {
                        stack.push((n, i + 1, false));
                    }
                    if let Some(n) = &node.star {
                        stack.push((n, i + 1, false));
                    }
                }
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

    #[test]
    fn removal_prunes_what_only_it_used_and_keeps_the_rest() {
        let mut trie = TopicTrie::default();
        let patterns = ["a.b.c", "a.b", "a.*.c", "#.c", "a.#", "x.y.z"];
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(p, i);
        }
        assert!(trie.remove("a.b.c", |v| *v == 0));
        assert!(!trie.remove("a.b.c", |v| *v == 0), "removed once");
        assert!(
            !trie.remove("a.b", |v| *v == 99),
            "only the value asked for"
        );
        assert!(trie.remove("x.y.z", |v| *v == 5));
        assert!(
            !trie.root.words.contains_key("x"),
            "an unused branch is pruned"
        );
        for k in ["a.b.c", "a.b", "a.q.c", "z.c", "x.y.z"] {
            let mut got = Vec::new();
            trie.matches(&split_key(k), &mut got);
            got.sort_unstable();
            got.dedup();
            let want: Vec<usize> = [1, 2, 3, 4]
                .into_iter()
                .filter(|&i| topic_match(patterns[i], k))
                .collect();
            assert_eq!(got, want, "key {k:?}");
        }
        for (i, p) in patterns.iter().enumerate().skip(1).take(4) {
            assert!(trie.remove(p, |v| *v == i));
        }
        assert!(!trie.root.has_children() && trie.root.values.is_empty());
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    #[test]
    fn many_hashes_against_a_long_key_stay_polynomial() {
        // `#.a.#.a.#...` against `a.a.a...` has exponentially many ways to match; the
        // automaton visits each (node, position) once, so this returns at once.
        let pattern = vec!["#"; 60].join(".a.");
        let key = vec!["a"; 120].join(".");
        let mut trie = TopicTrie::default();
        trie.insert(&pattern, 1u8);
        trie.insert(&format!("{pattern}.b"), 2u8);
        let mut out = Vec::new();
        trie.matches(&split_key(&key), &mut out);
        assert_eq!(out, vec![1]);
        assert!(topic_match(&pattern, &key));
    }

    #[test]
    fn a_node_matched_along_two_paths_yields_its_values_once() {
        let mut trie = TopicTrie::default();
        trie.insert("#.#.x.#", 7u8);
        trie.insert("a.#.#", 8u8);
        let mut out = Vec::new();
        trie.matches(&split_key("a.x.x.x"), &mut out);
        out.sort_unstable();
        assert_eq!(out, vec![7, 8]);
    }
}
