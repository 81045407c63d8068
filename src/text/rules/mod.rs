//! Text pre-processing rules of fastai 2.8 and fastai 1.0, reimplemented without regular
//! expressions but with the exact output of the Python originals.
//!
//! fastai 2.8 (`fastai/text/core.py`) applies `fix_html`, `replace_rep`, `replace_wrep`,
//! `spec_add_spaces`, `rm_useless_spaces`, `replace_all_caps`, `replace_maj` and
//! `lowercase` to each document string, splits it into words with spaCy, then applies
//! `replace_space` to each token. fastai 1.0 (`fastai/text/transform.py`) prepends
//! `xxbos ` to the document, applies its own versions of the first five rules, splits,
//! then applies `replace_all_caps` and `deal_caps` to the token list.
//!
//! Character classes follow Python 3.11's `re` module on `str` patterns: `\s` and `\w`
//! are Unicode-aware, `[A-Z]` and `[a-z]` are ASCII only.

mod entities;
mod fastai1;
mod fastai2;
mod html;
mod pychar;
#[cfg(test)]
mod tests;
mod unicode_tables;

use serde::{Deserialize, Serialize};

use crate::text::BOS;

/// One text rule: a string rule (applied by [`RuleSet::apply`]) or a token rule (applied
/// by [`RuleSet::apply_to_tokens`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// fastai 2.x `fix_html`: literal clean-ups (`#39;`, `<br />`, `...`) and `html.unescape`.
    FixHtml,
    /// fastai 2.x `replace_rep`: three or more copies of a character become `xxrep N c`.
    ReplaceRep,
    /// fastai 2.x `replace_wrep`: three or more copies of a word become `xxwrep N w`.
    ReplaceWrep,
    /// fastai 2.x `spec_add_spaces`: spaces around `/`, `#` and `\`.
    SpecAddSpaces,
    /// `rm_useless_spaces`: runs of ASCII spaces become one space (both versions).
    RmUselessSpaces,
    /// fastai 2.x `replace_all_caps`: `xxup` before lowercased all-caps words.
    ReplaceAllCaps,
    /// fastai 2.x `replace_maj`: `xxmaj` before lowercased capitalised words.
    ReplaceMaj,
    /// fastai 2.x `lowercase`: `xxbos ` plus the lowercased, stripped text.
    Lowercase,
    /// fastai 2.x `replace_space` token rule: spaces inside a token become `▁` (U+2581).
    ReplaceSpace,
    /// Prepends `xxbos ` to the text, as fastai 1.0's `TokenizeProcessor` does before its rules.
    AddBos,
    /// fastai 1.0 `fix_html`: fastai 2.x's clean-ups without the `...` rule, plus `@,@`,
    /// spaces around `\`, `html.unescape` and runs of spaces collapsed.
    FixHtmlV1,
    /// fastai 1.0 `replace_rep`: four or more copies of a character become `xxrep N c`.
    ReplaceRepV1,
    /// fastai 1.0 `replace_wrep`: a word and its trailing punctuation repeated four or
    /// more times become `xxwrep N w`.
    ReplaceWrepV1,
    /// fastai 1.0 `spec_add_spaces`: spaces around `/`, `#` and newlines.
    SpecAddSpacesV1,
    /// fastai 1.0 `replace_all_caps` token rule: `xxup` before lowercased all-caps tokens.
    ReplaceAllCapsV1,
    /// fastai 1.0 `deal_caps` token rule: `xxmaj` before capitalised tokens, all tokens
    /// lowercased, empty tokens dropped.
    DealCaps,
}

impl Rule {
    /// Returns whether the rule applies to the token list rather than the document string.
    pub fn is_token_rule(self) -> bool {
        matches!(
            self,
            Rule::ReplaceSpace | Rule::ReplaceAllCapsV1 | Rule::DealCaps
        )
    }
}

/// Error of [`RuleSet::by_name`] for a name that is not a known rule set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown rule set {name:?}: expected one of \"fastai\", \"fastai2\", \"fastai1\" or \"none\""
)]
pub struct UnknownRuleSetError {
    /// The rejected name.
    pub name: String,
}

/// A named, ordered list of rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSet {
    /// Name stored in model metadata (`fastai`, `fastai1` or `none`).
    pub name: String,
    /// Rules in application order. String and token rules may be mixed.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// fastai 2.x defaults (`defaults.text_proc_rules` and `text_postproc_rules`), named `fastai`.
    pub fn fastai2() -> Self {
        RuleSet {
            name: "fastai".to_string(),
            rules: vec![
                Rule::FixHtml,
                Rule::ReplaceRep,
                Rule::ReplaceWrep,
                Rule::SpecAddSpaces,
                Rule::RmUselessSpaces,
                Rule::ReplaceAllCaps,
                Rule::ReplaceMaj,
                Rule::Lowercase,
                Rule::ReplaceSpace,
            ],
        }
    }

    /// fastai 1.0 defaults (`text_pre_rules`, `text_post_rules` and the `xxbos` that
    /// `TokenizeProcessor` adds first), named `fastai1`.
    pub fn fastai1() -> Self {
        RuleSet {
            name: "fastai1".to_string(),
            rules: vec![
                Rule::AddBos,
                Rule::FixHtmlV1,
                Rule::ReplaceRepV1,
                Rule::ReplaceWrepV1,
                Rule::SpecAddSpacesV1,
                Rule::RmUselessSpaces,
                Rule::ReplaceAllCapsV1,
                Rule::DealCaps,
            ],
        }
    }

    /// No rules: text and tokens pass through unchanged, without `xxbos` or lowercasing.
    pub fn none() -> Self {
        RuleSet {
            name: "none".to_string(),
            rules: Vec::new(),
        }
    }

    /// Returns the rule set called `name`: `fastai` or `fastai2`, `fastai1`, or `none`.
    pub fn by_name(name: &str) -> Result<Self, UnknownRuleSetError> {
        match name {
            "fastai" | "fastai2" => Ok(Self::fastai2()),
            "fastai1" => Ok(Self::fastai1()),
            "none" => Ok(Self::none()),
            _ => Err(UnknownRuleSetError {
                name: name.to_string(),
            }),
        }
    }

    /// Applies the string rules, in order, to one document.
    pub fn apply(&self, text: &str) -> String {
        let mut current = String::with_capacity(text.len() + text.len() / 8 + 16);
        current.push_str(text);
        let mut scratch = String::with_capacity(current.capacity());
        let mut index = 0;
        while index < self.rules.len() {
            let rule = self.rules[index];
            // `replace_all_caps` directly followed by `replace_maj` runs as one pass.
            let fuse_caps = rule == Rule::ReplaceAllCaps
                && self.rules.get(index + 1) == Some(&Rule::ReplaceMaj);
            let changed = match rule {
                Rule::FixHtml => {
                    html::fix_html_v2(&mut current, &mut scratch);
                    false
                }
                Rule::FixHtmlV1 => {
                    html::fix_html_v1(&mut current, &mut scratch);
                    false
                }
                Rule::ReplaceRep => fastai2::replace_rep(&current, 3, &mut scratch),
                Rule::ReplaceRepV1 => fastai2::replace_rep(&current, 4, &mut scratch),
                Rule::ReplaceWrep => fastai2::replace_wrep(&current, &mut scratch),
                Rule::ReplaceWrepV1 => fastai1::replace_wrep(&current, &mut scratch),
                Rule::SpecAddSpaces => {
                    fastai2::spec_add_spaces(&current, [b'/', b'#', b'\\'], &mut scratch)
                }
                Rule::SpecAddSpacesV1 => {
                    fastai2::spec_add_spaces(&current, [b'/', b'#', b'\n'], &mut scratch)
                }
                Rule::RmUselessSpaces => fastai2::rm_useless_spaces(&current, &mut scratch),
                Rule::ReplaceAllCaps => {
                    fastai2::replace_caps(&current, true, fuse_caps, &mut scratch)
                }
                Rule::ReplaceMaj => fastai2::replace_caps(&current, false, true, &mut scratch),
                Rule::Lowercase => {
                    fastai2::lowercase(&current, &mut scratch);
                    true
                }
                Rule::AddBos => {
                    scratch.clear();
                    scratch.push_str(BOS);
                    scratch.push(' ');
                    scratch.push_str(&current);
                    true
                }
                Rule::ReplaceSpace | Rule::ReplaceAllCapsV1 | Rule::DealCaps => false,
            };
            if changed {
                std::mem::swap(&mut current, &mut scratch);
            }
            index += if fuse_caps { 2 } else { 1 };
        }
        current
    }

    /// Applies the token rules, in order, to the tokens of one document.
    pub fn apply_to_tokens(&self, tokens: &mut Vec<String>) {
        for rule in &self.rules {
            match rule {
                Rule::ReplaceSpace => {
                    for token in tokens.iter_mut() {
                        if token.contains(' ') {
                            *token = token.replace(' ', "\u{2581}");
                        }
                    }
                }
                Rule::ReplaceAllCapsV1 => fastai1::replace_all_caps_tokens(tokens),
                Rule::DealCaps => fastai1::deal_caps(tokens),
                _ => {}
            }
        }
    }
}
