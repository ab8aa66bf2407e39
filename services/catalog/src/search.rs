//! Text search that runs the same on MongoDB and on FerretDB (ADR 0006).
//!
//! MongoDB's `$text` indexes do not exist on FerretDB v1, and Atlas Search exists on neither a
//! local `mongod` nor FerretDB. So the catalog does its own tokenising: every product stores
//! `search_terms`, the *prefixes* of the lower-cased words of its sku, name, description,
//! category and string attributes ("Mug" → `m`, `mu`, `mug`). A query is tokenised the same
//! way and matched with `{search_terms: {$all: [...]}}`: every word of the query must start a
//! word of the product. That is an exact match on an array field, which both servers
//! implement, and which MongoDB serves from a multikey index.
//!
//! What it does not do: stemming ("mugs" does not find "mug"), typo tolerance, ranking (results
//! come in id order, which keeps cursor pagination stable), accent folding.

/// Words longer than this are indexed (and queried) by their first `MAX_PREFIX` characters:
/// it bounds the array size, and a 20-character prefix identifies a word well enough.
pub const MAX_PREFIX: usize = 20;
/// A query with more words than this is refused instead of becoming a huge `$all`.
pub const MAX_QUERY_WORDS: usize = 10;

/// The lower-cased alphanumeric words of `text`.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

/// Every prefix of every word of `texts`, sorted and without duplicates.
pub fn index_terms<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut terms = std::collections::BTreeSet::new();
    for text in texts {
        for word in words(text) {
            let mut prefix = String::new();
            for c in word.chars().take(MAX_PREFIX) {
                prefix.push(c);
                terms.insert(prefix.clone());
            }
        }
    }
    terms.into_iter().collect()
}

/// The terms a query must all match; `None` when it has more than [`MAX_QUERY_WORDS`] words.
/// An empty result (a blank query, or only punctuation) matches everything.
pub fn query_terms(query: &str) -> Option<Vec<String>> {
    let mut terms: Vec<String> = words(query)
        .map(|word| word.chars().take(MAX_PREFIX).collect())
        .collect();
    terms.sort();
    terms.dedup();
    (terms.len() <= MAX_QUERY_WORDS).then_some(terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_indexed_by_the_prefixes_of_their_words() {
        let terms = index_terms(["Mug", "mug-2 Øl"]);
        assert_eq!(terms, ["2", "m", "mu", "mug", "ø", "øl"]);
        let long = "a".repeat(30);
        assert_eq!(index_terms([long.as_str()]).len(), MAX_PREFIX);
    }

    #[test]
    fn a_query_matches_when_each_word_starts_a_product_word() {
        let product = index_terms(["Espresso beans", "Dark roast"]);
        for query in ["esp", "ESPRESSO dark", "roast, bean!", ""] {
            let terms = query_terms(query).unwrap();
            assert!(terms.iter().all(|t| product.contains(t)), "{query}");
        }
        let terms = query_terms("espresso light").unwrap();
        assert!(!terms.iter().all(|t| product.contains(t)));
        assert_eq!(query_terms(&"word ".repeat(11)).unwrap(), ["word"]);
        let many: String = (0..11).map(|i| format!("w{i} ")).collect();
        assert_eq!(query_terms(&many), None);
    }
}
