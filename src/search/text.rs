//! Text to weighted features: words normalised (lower case, letters and
//! digits only, 2 to 32 characters, a short list of English function words
//! left out), then word shingles of one and two words, each weighted by
//! `1 + ln(count)` (bigrams at half weight: they add word order without
//! drowning the vocabulary). Plain data; the same text always gives the
//! same features on every platform (hashes are BLAKE3, not `std`'s).
//!
//! ```
//! use butter::search::text::{features, words};
//!
//! assert_eq!(words("The Quick, brown fox!"), vec!["quick", "brown", "fox"]);
//! let f = features("fox fox fox");
//! // One unigram ("fox") and one bigram ("fox fox").
//! assert_eq!(f.len(), 2);
//! ```

use std::collections::HashMap;

/// Shortest word kept, in characters.
pub const MIN_WORD: usize = 2;
/// Longest word kept, in characters (longer ones are cut).
pub const MAX_WORD: usize = 32;
/// Words read from one text at most (the rest is ignored: a signature
/// costs the same for a book as for a page).
pub const MAX_WORDS: usize = 20_000;

/// English function words: in almost every text, they say nothing about
/// what one is about.
const STOP: &[&str] = &[
    "a", "about", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by",
    "can", "do", "does", "for", "from", "has", "have", "he", "her", "his", "how", "if", "in",
    "into", "is", "it", "its", "may", "more", "most", "no", "not", "of", "on", "one", "only", "or",
    "other", "our", "she", "so", "some", "such", "than", "that", "the", "their", "them", "then",
    "there", "these", "they", "this", "those", "to", "too", "up", "us", "very", "was", "we",
    "were", "what", "when", "which", "who", "will", "with", "would", "you", "your",
];

/// Whether `w` (normalised) is a function word.
pub fn is_stop_word(w: &str) -> bool {
    STOP.binary_search(&w).is_ok()
}

/// The normalised words of `text`, in order (at most [`MAX_WORDS`]).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.chars()
                .flat_map(char::to_lowercase)
                .take(MAX_WORD)
                .collect::<String>()
        })
        .filter(|w| w.chars().count() >= MIN_WORD && !is_stop_word(w))
        .take(MAX_WORDS)
        .collect()
}

/// A feature: the 64-bit hash of a shingle, and its weight.
pub type Feature = (u64, f32);

/// The hash of a shingle of words (domain-separated, stable).
pub fn shingle_hash(words: &[&str]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"butter/sim/shingle/v1");
    for w in words {
        h.update(&(w.len() as u32).to_le_bytes());
        h.update(w.as_bytes());
    }
    let out = h.finalize();
    u64::from_le_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Weighted features of `text`: unigrams and bigrams of its words.
pub fn features(text: &str) -> Vec<Feature> {
    features_of_words(&words(text))
}

/// [`features`] of words normalised already.
pub fn features_of_words(words: &[String]) -> Vec<Feature> {
    let mut counts: HashMap<u64, (u32, f32)> = HashMap::new();
    for w in words {
        counts.entry(shingle_hash(&[w])).or_insert((0, 1.0)).0 += 1;
    }
    for pair in words.windows(2) {
        counts
            .entry(shingle_hash(&[&pair[0], &pair[1]]))
            .or_insert((0, 0.5))
            .0 += 1;
    }
    let mut out: Vec<Feature> = counts
        .into_iter()
        .map(|(h, (n, scale))| (h, scale * (1.0 + (n as f32).ln())))
        .collect();
    // A stable order (a HashMap's is random): the signature sums floats.
    out.sort_by_key(|f| f.0);
    out
}

/// The `max` words that say most about `words` (normalised): the most
/// frequent first, longer ones first among equals (a long word is rarer),
/// each once.
pub fn top_terms(words: &[String], max: usize) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in words {
        *counts.entry(w.as_str()).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(b.0.len().cmp(&a.0.len()))
            .then(a.0.cmp(b.0))
    });
    ranked
        .into_iter()
        .take(max)
        .map(|(w, _)| w.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_list_is_sorted_for_binary_search() {
        let mut sorted = STOP.to_vec();
        sorted.sort();
        assert_eq!(sorted, STOP);
        assert!(is_stop_word("the") && !is_stop_word("butter"));
    }

    #[test]
    fn words_are_normalised_bounded_and_unicode_aware() {
        assert_eq!(words("Über-Käse, 42 x"), vec!["über", "käse", "42"]);
        let long = "a".repeat(100);
        assert_eq!(words(&long)[0].chars().count(), MAX_WORD);
        let many = "word ".repeat(MAX_WORDS + 10);
        assert_eq!(words(&many).len(), MAX_WORDS);
        assert!(words("").is_empty());
    }

    #[test]
    fn top_terms_are_frequent_then_long() {
        let w = words("zebra apple apple kiwi banana banana zebra fig");
        assert_eq!(top_terms(&w, 3), vec!["banana", "apple", "zebra"]);
        assert_eq!(top_terms(&w, 10).len(), 5);
    }

    #[test]
    fn repeated_words_weigh_more_but_not_linearly() {
        let f1 = features("butter");
        let f3 = features("butter butter butter");
        let w = |f: &[Feature]| {
            f.iter()
                .find(|(h, _)| *h == shingle_hash(&["butter"]))
                .unwrap()
                .1
        };
        assert_eq!(w(&f1), 1.0);
        assert!(w(&f3) > 1.0 && w(&f3) < 3.0);
        // Same text, same features (order included).
        assert_eq!(features("cheese bread milk"), features("cheese bread milk"));
        assert_eq!(features("cheese bread milk").len(), 5);
    }
}
