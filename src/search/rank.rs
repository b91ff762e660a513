//! How hits are ranked, one rule for the network query and for a
//! brute-force ranking of a whole corpus (which is what the search is
//! measured against). A query of a few words (at most `max_terms` distinct
//! ones) is a keyword query: its hits are the items that carry at least
//! one of its words among their terms, those with more first, then by
//! signature distance. A longer query is a
//! similarity query: by signature distance alone (its top words only widen
//! the candidates).
//!
//! ```
//! use butter::search::rank::Ranker;
//! use butter::search::signature::Sketch;
//!
//! let r = Ranker::of_text("butter churn", 4);
//! assert!(r.is_keyword_query());
//! let doc = Sketch::of_text("how to churn butter at home").signature;
//! let with = r.rank(doc, &["butter".to_string(), "churn".to_string()]);
//! let one = r.rank(doc, &["butter".to_string()]);
//! let none = r.rank(doc, &["home".to_string()]);
//! assert!(with < one, "more of the query's words rank first");
//! assert!(r.is_hit(&one) && !r.is_hit(&none));
//! ```

use super::signature::{Signature, Sketch};
use super::text::{features_of_words, top_terms, words};

/// A hit's place: lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    /// Query words the hit does not carry (keyword queries; else 0).
    pub missing: usize,
    /// Bits its signature differs from the query's in.
    pub distance: u32,
}

/// A query's ranking rule.
#[derive(Debug, Clone)]
pub struct Ranker {
    /// The query's sketch.
    pub sketch: Sketch,
    /// The words looked up as terms.
    pub terms: Vec<String>,
    keyword: bool,
}

impl Ranker {
    /// The rule for a text query; up to `max_terms` of its words are
    /// looked up as terms.
    pub fn of_text(text: &str, max_terms: usize) -> Ranker {
        let w = words(text);
        let mut distinct = w.clone();
        distinct.sort();
        distinct.dedup();
        let keyword = !distinct.is_empty() && distinct.len() <= max_terms;
        Ranker {
            sketch: Sketch::of_features(&features_of_words(&w)),
            terms: top_terms(&w, max_terms),
            keyword,
        }
    }

    /// The rule for a sketch (an embedding's): similarity alone.
    pub fn of_sketch(sketch: Sketch) -> Ranker {
        Ranker {
            sketch,
            terms: Vec::new(),
            keyword: false,
        }
    }

    /// Whether an item of this rank is a hit at all (a keyword query's
    /// hits carry at least one of its words).
    pub fn is_hit(&self, rank: &Rank) -> bool {
        !self.keyword || rank.missing < self.terms.len()
    }

    /// Whether hits are ranked by the query's words first.
    pub fn is_keyword_query(&self) -> bool {
        self.keyword
    }

    /// The place of a hit with `signature` and `terms`.
    pub fn rank(&self, signature: Signature, terms: &[String]) -> Rank {
        let missing = if self.keyword {
            self.terms.iter().filter(|t| !terms.contains(t)).count()
        } else {
            0
        };
        Rank {
            missing,
            distance: self.sketch.signature.hamming(signature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_queries_rank_by_similarity_alone() {
        let r = Ranker::of_text("one two three four five six seven eight nine ten", 4);
        assert!(!r.is_keyword_query());
        assert_eq!(r.terms.len(), 4);
        let sig = Signature(0);
        assert_eq!(r.rank(sig, &[]).missing, 0);
        let e = Ranker::of_text("", 4);
        assert!(!e.is_keyword_query());
    }
}
