//! The tokenizer used everywhere text becomes tokens: a rule set (fastai's rewriting of
//! the raw string), then either the spaCy-compatible English word splitter or a trained
//! subword model, then the rule set's token rules.

use std::ops::Range;

use rayon::prelude::*;

use super::rules::{Rule, RuleSet};
use super::spacy::EnglishTokenizer;
use super::subword::{SubwordError, SubwordModel};

/// Splits rewritten text into tokens.
pub enum Splitter {
    /// spaCy 3.8's blank-English tokenizer, as fastai's `WordTokenizer` uses it.
    Word(EnglishTokenizer),
    /// A trained Unigram or BPE model (MultiFiT's approach for languages without spaces).
    Subword(Box<SubwordModel>),
}

/// Rules plus a splitter: turns one document into its tokens.
pub struct Tokenizer {
    rules: RuleSet,
    splitter: Splitter,
    /// The token rules are at most `ReplaceSpace`, which the word path applies while
    /// visiting, so it needs no `String` per token.
    only_space_token_rule: bool,
    /// The rules contain `ReplaceSpace`.
    replace_space: bool,
}

/// Reusable buffers for [`Tokenizer::for_each_token`], one per thread.
#[derive(Default)]
pub struct Scratch {
    spans: Vec<Range<usize>>,
    tokens: Vec<String>,
}

impl Tokenizer {
    /// Returns fastai 2.x's default tokenizer: its rules and spaCy's English splitting.
    pub fn fastai() -> Self {
        Self::word(RuleSet::fastai2())
    }

    /// Returns a word tokenizer with the given rules.
    pub fn word(rules: RuleSet) -> Self {
        Self::new(rules, Splitter::Word(EnglishTokenizer::new()))
    }

    /// Returns a subword tokenizer with the given rules.
    pub fn subword(rules: RuleSet, model: SubwordModel) -> Self {
        Self::new(rules, Splitter::Subword(Box::new(model)))
    }

    fn new(rules: RuleSet, splitter: Splitter) -> Self {
        let only_space_token_rule = rules
            .rules
            .iter()
            .all(|rule| !rule.is_token_rule() || *rule == Rule::ReplaceSpace);
        let replace_space = rules.rules.contains(&Rule::ReplaceSpace);
        Self {
            rules,
            splitter,
            only_space_token_rule,
            replace_space,
        }
    }

    /// Returns the rule set.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Returns the splitter.
    pub fn splitter(&self) -> &Splitter {
        &self.splitter
    }

    /// Calls `visit` with each token of `text`, in order, without allocating a string
    /// per token on the word path.
    pub fn for_each_token(
        &self,
        text: &str,
        scratch: &mut Scratch,
        mut visit: impl FnMut(&str),
    ) -> Result<(), SubwordError> {
        let rewritten = self.rules.apply(text);
        match &self.splitter {
            Splitter::Word(words) if self.only_space_token_rule => {
                scratch.spans.clear();
                words.split(&rewritten, &mut scratch.spans);
                for span in &scratch.spans {
                    let token = &rewritten[span.clone()];
                    if self.replace_space && token.contains(' ') {
                        visit(&token.replace(' ', "\u{2581}"));
                    } else {
                        visit(token);
                    }
                }
                return Ok(());
            }
            Splitter::Word(words) => {
                scratch.spans.clear();
                words.split(&rewritten, &mut scratch.spans);
                scratch.tokens.clear();
                scratch.tokens.extend(
                    scratch
                        .spans
                        .iter()
                        .map(|s| rewritten[s.clone()].to_string()),
                );
            }
            Splitter::Subword(model) => {
                scratch.tokens = model.encode(&rewritten)?;
            }
        }
        self.rules.apply_to_tokens(&mut scratch.tokens);
        for token in &scratch.tokens {
            visit(token);
        }
        Ok(())
    }

    /// Returns the tokens of one document.
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>, SubwordError> {
        let mut tokens = Vec::new();
        let mut scratch = Scratch::default();
        self.for_each_token(text, &mut scratch, |token| tokens.push(token.to_string()))?;
        Ok(tokens)
    }

    /// Returns the tokens of many documents, computed in parallel, in input order.
    pub fn tokenize_all<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<Vec<Vec<String>>, SubwordError> {
        texts
            .par_iter()
            .map_init(Scratch::default, |scratch, text| {
                let mut tokens = Vec::new();
                self.for_each_token(text.as_ref(), scratch, |t| tokens.push(t.to_string()))?;
                Ok(tokens)
            })
            .collect()
    }
}
